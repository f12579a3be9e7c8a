"""trailguard: Splunk ESCU's "previously unseen" CloudTrail detections, on Airflow, without a SIEM."""

__version__ = "0.1.0"
