import pytest

from apt_kernel.versions import InvalidRange, parse_range, satisfies


@pytest.mark.parametrize(("version", "spec", "expected"), [
    ("1.2.0", "^1.2", True), ("1.9.9", "^1.2", True), ("2.0.0", "^1.2", False), ("1.1.9", "^1.2", False),
    ("0.2.5", "^0.2.3", True), ("0.3.0", "^0.2.3", False),
    ("0.0.3", "^0.0.3", True), ("0.0.4", "^0.0.3", False),
    ("1.2.9", "~1.2.3", True), ("1.3.0", "~1.2.3", False), ("1.9.0", "~1", True),
    ("1.5", ">=1,<2", True), ("2.0", ">=1,<2", False),
    ("3.1.4", "*", True), ("1.0", "1.0", True), ("1.0.1", "1.0", False),
    ("1.4.0", "^1.2, !=1.4.0", False), ("2.1", "~=2.0", True),
])
def test_ranges(version, spec, expected):
    assert satisfies(version, spec) is expected


@pytest.mark.parametrize("bad", ["^abc", ">>1", "~x.y", "^1.2.3.4.5"])
def test_invalid_range_names_the_clause(bad):
    with pytest.raises(InvalidRange, match="invalid version range"):
        parse_range(bad)
