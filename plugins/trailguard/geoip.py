"""GeoIP enrichment from MaxMind-format databases (GeoLite2 City, optionally ASN)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import geoip2.database
import geoip2.errors


@dataclass(frozen=True)
class Geo:
    country: str | None  # ISO 3166 alpha-2
    country_name: str | None
    city: str | None
    region: str | None
    asn: int | None = None
    asn_org: str | None = None


class GeoIP:
    """Lookups cached per IP: a day of CloudTrail has few distinct source addresses."""

    def __init__(self, city_db: str, asn_db: str = "") -> None:
        if not city_db:
            raise ValueError("no GeoIP database: set TRAILGUARD_GEOIP_DB to a GeoLite2-City .mmdb file")
        self._city = geoip2.database.Reader(city_db)
        self._asn = geoip2.database.Reader(asn_db) if asn_db else None
        self.lookup = lru_cache(maxsize=100_000)(self._lookup)

    def _lookup(self, ip: str) -> Geo | None:
        try:
            city = self._city.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None
        if not city.country.iso_code:
            return None
        asn = asn_org = None
        if self._asn is not None:
            try:
                record = self._asn.asn(ip)
                asn, asn_org = record.autonomous_system_number, record.autonomous_system_organization
            except (geoip2.errors.AddressNotFoundError, ValueError):
                pass
        return Geo(
            country=city.country.iso_code,
            country_name=city.country.name,
            city=city.city.name,
            region=city.subdivisions.most_specific.name if city.subdivisions else None,
            asn=asn,
            asn_org=asn_org,
        )

    def close(self) -> None:
        self._city.close()
        if self._asn is not None:
            self._asn.close()
