import pytest

from apt_kernel.errors import ResolutionError
from apt_kernel.solver import KERNEL_API, Catalog, solve


def test_picks_newest_compatible_versions():
    catalog = Catalog("1.0.0")
    catalog.add("a", "2.0.0", {"b": "^2"}, "^1")
    catalog.add("a", "1.0.0", {"b": "^1"}, "^1")
    catalog.add("b", "2.1.0", {}, "^2")  # needs a newer kernel: must be skipped
    catalog.add("b", "1.5.0", {}, "^1")
    chosen = solve(catalog, {"a": "*"})
    assert str(chosen["a"].version) == "1.0.0"
    assert str(chosen["b"].version) == "1.5.0"
    assert KERNEL_API in chosen


def test_kernel_api_conflict_is_explained_as_a_chain():
    catalog = Catalog("1.0.0")
    catalog.add("apt-plugin-x", "2.1", {}, "^3")
    catalog.add("apt-plugin-x", "1.0", {}, "^1")
    with pytest.raises(ResolutionError) as err:
        solve(catalog, {"apt-plugin-x": ">=2"})
    assert str(err.value) == ("pipeline needs apt-plugin-x >=2; apt-plugin-x 2.1 requires apt-kernel-api ^3; "
                              "installed kernel API is 1.0.0 → cannot run")


def test_two_sided_conflict_names_both_requirers():
    catalog = Catalog("1.0.0")
    catalog.add("a", "1.0", {"c": "^1"})
    catalog.add("b", "1.0", {"c": "^2"})
    catalog.add("c", "1.4")
    catalog.add("c", "2.0")
    catalog.installed.update({"a", "b", "c"})
    with pytest.raises(ResolutionError) as err:
        solve(catalog, {"a": "*", "b": "*"})
    text = str(err.value)
    assert "a 1.0 requires c ^1" in text and "b 1.0 requires c ^2" in text
    assert "installed c: 2.0, 1.4" in text and text.endswith("→ cannot run")


def test_transitive_chain():
    catalog = Catalog("1.0.0")
    catalog.add("top", "1.0", {"mid": "^1"})
    catalog.add("mid", "1.2", {"leaf": ">=5"})
    catalog.add("leaf", "4.0")
    with pytest.raises(ResolutionError) as err:
        solve(catalog, {"top": "*"})
    assert str(err.value).startswith("pipeline needs top; top 1.0 requires mid ^1; mid 1.2 requires leaf >=5")


def test_missing_package():
    with pytest.raises(ResolutionError, match="pipeline needs ghost >=1, which is not installed"):
        solve(Catalog(), {"ghost": ">=1"})


def test_backtracks_over_older_versions():
    catalog = Catalog("1.0.0")
    for v in ("3.0", "2.0", "1.0"):
        catalog.add("a", v, {"b": f"=={v}"})
    catalog.add("b", "1.0")
    catalog.add("c", "1.0", {"a": "<3"})
    assert str(solve(catalog, {"a": "*", "c": "*"})["a"].version) == "1.0"


# Two ranges on one package that share their first clause: a match cache keyed by less than the whole
# range answers the second with the first's versions.
@pytest.mark.parametrize("roots", [("a", "b"), ("b", "a")], ids=["narrow-first", "wide-first"])
def test_two_requirers_with_the_same_lower_bound_and_different_upper_ones_both_hold(roots):
    catalog = Catalog("1.0.0")
    catalog.add("a", "1.0", {"c": ">=1,<2"})
    catalog.add("b", "1.0", {"c": ">=1,<3"})
    for version in ("1.5", "2.5", "3.5"):
        catalog.add("c", version)
    assert str(solve(catalog, dict.fromkeys(roots, "*"))["c"].version) == "1.5"


@pytest.mark.parametrize("ranges", [(">=1,<2", ">=1,>=2"), (">=1,>=2", ">=1,<2")], ids=["upper-first", "lower-first"])
def test_two_ranges_with_the_same_first_clause_that_exclude_each_other_conflict(ranges):
    catalog = Catalog("1.0.0")
    catalog.add("a", "1.0", {"c": ranges[0]})
    catalog.add("b", "1.0", {"c": ranges[1]})
    for version in ("1.5", "2.5"):
        catalog.add("c", version)
    with pytest.raises(ResolutionError) as err:
        solve(catalog, {"a": "*", "b": "*"})
    assert f"a 1.0 requires c {ranges[0]}" in str(err.value) and f"b 1.0 requires c {ranges[1]}" in str(err.value)


def test_the_pipeline_and_a_plugin_narrowing_the_same_package():
    catalog = Catalog("1.0.0")
    catalog.add("a", "1.0", {"c": ">=1,<2"})
    for version in ("1.5", "2.5"):
        catalog.add("c", version)
    assert str(solve(catalog, {"c": ">=1,<3", "a": "*"})["c"].version) == "1.5"
    assert str(solve(catalog, {"a": "*", "c": ">=1,<3"})["c"].version) == "1.5"
