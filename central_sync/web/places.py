"""Human names and approximate map positions of administrative areas (kota, kecamatan, kelurahan).

The table is a small CSV (``kind,code,name,lat,lon,approx``) for the configured city; the bundled
one covers the demo's Kota Semarang codes. A kelurahan without a name in the table is shown as
"Kelurahan <code>" rather than guessed. Positions are centroids: a post is placed near its
kelurahan's centroid, offset by its RW and RT so posts do not sit on top of each other, and
marked approximate until enrolment records the post's own coordinates.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from central_sync.errors import CentralConfigError

BUNDLED = Path(__file__).resolve().parent / "data" / "places-3374.csv"


@dataclass(frozen=True, slots=True)
class Place:
    kind: str
    code: str
    name: str
    lat: float | None
    lon: float | None
    approx: bool


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lon: float
    approx: bool


class Places:
    def __init__(self, places: dict[str, Place]) -> None:
        self._by_code = places

    @classmethod
    def load(cls, path: str | Path | None = None) -> Places:
        return _load(str(path or BUNDLED))

    def get(self, code: str | None) -> Place | None:
        return self._by_code.get(code or "")

    def kelurahan_name(self, code: str | None) -> str:
        """"Kelurahan Bulusan" when the table names it, else "Kelurahan 33.74.10.1005"."""
        if not code:
            return ""
        place = self.get(code)
        return f"Kelurahan {place.name if place and place.name else code}"

    def kecamatan_name(self, code: str | None) -> str:
        """The kecamatan of a kelurahan code ("Kecamatan Tembalang"), or "" when unknown."""
        if not code or code.count(".") < 2:
            return ""
        place = self.get(".".join(code.split(".")[:3]))
        return f"Kecamatan {place.name}" if place and place.name else ""

    def area(self, code: str | None) -> str:
        """Kelurahan and kecamatan, e.g. "Kelurahan 33.74.10.1005, Kecamatan Tembalang"."""
        parts = [self.kelurahan_name(code), self.kecamatan_name(code)]
        return ", ".join(p for p in parts if p)

    def centroid(self, code: str | None) -> Position | None:
        """The most specific centroid known for a code (kelurahan, kecamatan, kota)."""
        parts = (code or "").split(".")
        for n in range(len(parts), 1, -1):
            place = self.get(".".join(parts[:n]))
            if place and place.lat is not None and place.lon is not None:
                return Position(place.lat, place.lon, place.approx or n < len(parts))
        return None

    def post_position(self, code: str | None, rw: int | None, rt: int | None) -> Position | None:
        """Near the kelurahan centroid: RW on a ring of ~250 m steps, RT spread around it."""
        base = self.centroid(code)
        if base is None:
            return None
        rw_n, rt_n = int(rw or 0), int(rt or 0)
        angle = rw_n * 2.399963 + rt_n * 0.9        # golden angle: RWs spread evenly
        radius = 0.0022 * (1 + rw_n % 5) + 0.0004 * rt_n
        return Position(base.lat + radius * math.sin(angle),
                        base.lon + radius * math.cos(angle), True)


@functools.cache
def _load(path: str) -> Places:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = [line for line in f if not line.startswith("#")]
    except OSError as exc:
        raise CentralConfigError(f"cannot read the places table: {exc}", "web.places_file") from None
    out: dict[str, Place] = {}
    for row in csv.DictReader(lines):
        try:
            lat = float(row["lat"]) if row.get("lat") else None
            lon = float(row["lon"]) if row.get("lon") else None
            out[row["code"].strip()] = Place(row["kind"].strip(), row["code"].strip(),
                                             (row.get("name") or "").strip(), lat, lon,
                                             (row.get("approx") or "1").strip() != "0")
        except (KeyError, ValueError, AttributeError):
            raise CentralConfigError(f"bad row in the places table: {row}",
                                     "web.places_file") from None
    return Places(out)


def places_of(app_state: object) -> Places:
    """The app's places table (``app.state.places``, set by ``create_app``)."""
    found = getattr(app_state, "places", None)
    return found if isinstance(found, Places) else Places.load()
