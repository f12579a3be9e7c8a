# trailguard's Airflow image: the official Airflow 3.3.2 image (Python 3.11, the same Python as
# the project's virtualenv) plus the project's pinned requirements and the trailguard package.
FROM apache/airflow:3.3.2-python3.11

# The lake folder exists in the image and belongs to airflow, so a fresh named volume mounted
# on it inherits that owner.
USER root
RUN mkdir -p /opt/airflow/lake /opt/airflow/include \
    && chown -R airflow:0 /opt/airflow/lake /opt/airflow/include

# The official image wants extra packages installed as the airflow user (its pip refuses root).
USER airflow

# requirements.txt is a full freeze of what trailguard needs at run time and pins
# apache-airflow==3.3.2, the version this image already has, so pip keeps Airflow where it is and
# only adds or moves the other pins. The freeze acts as our constraints file. Development tools
# (pytest, ruff, moto) are in requirements-dev.txt and stay out of this image. An alternative, if
# the list is ever reduced to top-level names, is Airflow's own constraints for this version and Python:
#   pip install -r requirements.txt \
#     --constraint https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt
# Providers the image ships (celery, fab, postgres, redis, ...) stay installed; the compose
# file relies on celery and fab from here.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt

# The project itself, installed editable from /opt/airflow so that the `trailguard` console
# script exists and the package resolves to /opt/airflow/plugins/trailguard (the folder the
# compose file mounts), with include/ beside it. Dependencies came from requirements.txt above.
# README* (not README.md) so that a checkout without the readme still builds; pyproject names it.
COPY --chown=airflow:0 pyproject.toml README* /opt/airflow/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && trailguard --help > /dev/null
