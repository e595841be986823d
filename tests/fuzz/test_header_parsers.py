"""Property tests of the tus header parsers (Upload-Metadata, Upload-Checksum, Upload-Concat, integers).

Each parser must only ever raise ValueError (which the views turn into 400)
on arbitrary text, must round-trip every valid header a client can build, and
must reject the malformed shapes the spec rules out.
"""

from __future__ import annotations

import base64
import hashlib
import string
import zlib

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tusbridge.checksums import ALGORITHMS, Checksum, parse_checksum
from tusbridge.tus.headers import parse_concat, parse_metadata, parse_uint

# The parsers touch no fixtures; the suite's autouse settings fixture is harmless here.
PARSERS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Characters a metadata key may use: printable ASCII except space and comma.
KEY_ALPHABET = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ",")
ID_ALPHABET = string.ascii_letters + string.digits + "_-"
DIGEST_SIZES = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64, "crc32": 4}
MAX_UINT = 2**63 - 1

keys = st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=20)
values = st.none() | st.binary(min_size=1, max_size=64)
metadata_dicts = st.dictionaries(keys, values, min_size=1, max_size=8)
anything = st.text(max_size=200) | st.text(alphabet=KEY_ALPHABET + " ,;=/:\t", max_size=200)
upload_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64)


def encode_metadata(metadata: dict[str, bytes | None], separator: str = ",") -> str:
    """Upload-Metadata as a client builds it (the space is left out for an empty value)."""
    return separator.join(k if v is None else f"{k} {base64.b64encode(v).decode('ascii')}" for k, v in metadata.items())


def raw_digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def raises_only_value_error(parse: object, *args: object) -> None:
    """Call ``parse``; ValueError is fine, any other exception fails the test."""
    try:
        parse(*args)  # type: ignore[operator]
    except ValueError:
        pass


# parse_metadata -----------------------------------------------------------------------


@PARSERS
@given(anything)
def test_metadata_only_raises_value_error(raw: str) -> None:
    """Arbitrary text: a dict or ValueError, never another exception."""
    raises_only_value_error(parse_metadata, raw)


@PARSERS
@given(metadata_dicts, st.sampled_from([",", ", ", " , ", ",\t"]))
def test_metadata_round_trip(metadata: dict[str, bytes | None], separator: str) -> None:
    """encode -> parse gives back every key and value, whatever whitespace surrounds the commas."""
    assert parse_metadata(encode_metadata(metadata, separator)) == metadata


@PARSERS
@given(keys)
def test_metadata_key_with_trailing_space_and_no_value(key: str) -> None:
    """``key `` (space, empty value) is the same as ``key``."""
    assert parse_metadata(f"{key} ") == {key: None}


@PARSERS
@given(metadata_dicts, st.integers(min_value=0, max_value=8), st.sampled_from(["", " ", "\t", " \t "]))
def test_metadata_empty_key_rejected(metadata: dict[str, bytes | None], position: int, empty_pair: str) -> None:
    """An empty pair anywhere in the list (empty key) is refused."""
    pairs = encode_metadata(metadata).split(",")
    pairs.insert(min(position, len(pairs)), empty_pair)
    with pytest.raises(ValueError):
        parse_metadata(",".join(pairs))


@PARSERS
@given(metadata_dicts, st.data())
def test_metadata_duplicate_key_rejected(metadata: dict[str, bytes | None], data: st.DataObject) -> None:
    """All keys MUST be unique: a repeated key is refused."""
    key = data.draw(st.sampled_from(sorted(metadata)))
    value = data.draw(values)
    raw = encode_metadata(metadata) + "," + encode_metadata({key: value})
    with pytest.raises(ValueError):
        parse_metadata(raw)


@PARSERS
@given(keys, keys, st.binary(min_size=1, max_size=32))
def test_metadata_space_in_key_rejected(left: str, right: str, value: bytes) -> None:
    """A key with a space in it cannot be told apart from key + value: refused."""
    raw = f"{left} {right} {base64.b64encode(value).decode('ascii')}"
    with pytest.raises(ValueError):
        parse_metadata(raw)


@st.composite
def invalid_base64(draw: st.DrawFn) -> str:
    """A value that is not valid, padded, standard-alphabet base64."""
    kind = draw(st.sampled_from(["bad-char", "unpadded", "bad-length", "non-ascii", "urlsafe"]))
    if kind == "bad-char":
        good = base64.b64encode(draw(st.binary(min_size=1, max_size=30))).decode()
        i = draw(st.integers(min_value=0, max_value=len(good) - 1))
        return good[:i] + draw(st.sampled_from("!@#$%^&*()[]{}<>?.;:'\"~`|\\")) + good[i + 1 :]
    if kind == "unpadded":
        raw = draw(st.binary(min_size=1, max_size=30).filter(lambda b: len(b) % 3 != 0))
        return base64.b64encode(raw).decode().rstrip("=")
    if kind == "bad-length":
        good = base64.b64encode(draw(st.binary(min_size=3, max_size=30).filter(lambda b: len(b) % 3 == 0))).decode()
        return good + draw(st.sampled_from(["A", "AB", "ABC"]))
    if kind == "non-ascii":
        return base64.b64encode(draw(st.binary(max_size=10))).decode() + draw(st.sampled_from(["é", "ß", "\u2603"]))
    raw = draw(st.binary(min_size=1, max_size=30))
    encoded = base64.urlsafe_b64encode(raw).decode()
    assume("-" in encoded or "_" in encoded)
    return encoded


@PARSERS
@given(keys, invalid_base64())
@example("filename", "d29ybGQ")
@example("filename", "d29y bGQ=")
def test_metadata_invalid_base64_rejected(key: str, value: str) -> None:
    """Values MUST be base64: anything else is refused."""
    with pytest.raises(ValueError):
        parse_metadata(f"{key} {value}")


@PARSERS
@given(st.text(min_size=1, max_size=10).filter(lambda k: any(c not in KEY_ALPHABET for c in k)))
@example("ключ")
@example("a\x00b")
def test_metadata_key_outside_printable_ascii_rejected(key: str) -> None:
    """Keys are printable ASCII; control characters or non-ASCII in a key are refused."""
    assume(not set(key) & {" ", "\t", ","})
    with pytest.raises(ValueError):
        parse_metadata(f"{key} dmFsdWU=")


# parse_checksum -----------------------------------------------------------------------


@PARSERS
@given(anything)
def test_checksum_only_raises_value_error(raw: str) -> None:
    """Arbitrary text: a Checksum or ValueError, never another exception."""
    raises_only_value_error(parse_checksum, raw)


@st.composite
def valid_checksums(draw: st.DrawFn) -> tuple[str, bytes]:
    algorithm = draw(st.sampled_from(sorted(ALGORITHMS)))
    return algorithm, draw(st.binary(min_size=DIGEST_SIZES[algorithm], max_size=DIGEST_SIZES[algorithm]))


@PARSERS
@given(valid_checksums())
def test_checksum_round_trip(pair: tuple[str, bytes]) -> None:
    """A supported algorithm and a digest of its size parse back to the same values."""
    algorithm, expected = pair
    checksum = parse_checksum(f"{algorithm} {base64.b64encode(expected).decode('ascii')}")
    assert isinstance(checksum, Checksum)
    assert checksum.algorithm == algorithm
    assert checksum.expected == expected


@PARSERS
@given(st.sampled_from(sorted(ALGORITHMS)), st.binary(max_size=2048), st.data())
def test_checksum_matches_exactly_its_data(algorithm: str, data: bytes, draws: st.DataObject) -> None:
    """A parsed checksum matches the data it was computed from (fed in any pieces), and not a one-bit change."""
    header = f"{algorithm} {base64.b64encode(raw_digest(algorithm, data)).decode('ascii')}"
    cuts = sorted(draws.draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=5)))
    good = parse_checksum(header)
    start = 0
    for cut in [*cuts, len(data)]:
        good.update(data[start:cut])
        start = cut
    assert good.matches()
    if data:
        bit = draws.draw(st.integers(min_value=0, max_value=len(data) * 8 - 1))
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = parse_checksum(header)
        bad.update(bytes(flipped))
        assert not bad.matches()


@PARSERS
@given(valid_checksums())
def test_checksum_uppercase_algorithm_rejected(pair: tuple[str, bytes]) -> None:
    """Algorithm names are lowercase only (spec: uppercase characters are excluded)."""
    algorithm, expected = pair
    encoded = base64.b64encode(expected).decode("ascii")
    # All uppercase, and each single letter uppercased in turn.
    one_upper = {algorithm[:i] + c.upper() + algorithm[i + 1 :] for i, c in enumerate(algorithm) if c.isalpha()}
    for name in {algorithm.upper(), *one_upper}:
        assert name != algorithm
        with pytest.raises(ValueError):
            parse_checksum(f"{name} {encoded}")


@PARSERS
@given(st.text(alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=16), st.binary(max_size=64))
@example("sha3-256", b"\x00" * 32)
@example("sha224", b"\x00" * 28)
@example("crc32c", b"\x00" * 4)
@example("blake2b", b"\x00" * 64)
def test_checksum_unknown_algorithm_rejected(algorithm: str, expected: bytes) -> None:
    """Algorithms other than sha1, md5, sha256, sha512, crc32 are refused."""
    assume(algorithm not in ALGORITHMS)
    with pytest.raises(ValueError):
        parse_checksum(f"{algorithm} {base64.b64encode(expected).decode('ascii')}")


@PARSERS
@given(st.sampled_from(sorted(ALGORITHMS)), st.binary(max_size=80))
def test_checksum_wrong_digest_length_rejected(algorithm: str, expected: bytes) -> None:
    """A digest whose size does not fit the algorithm is refused."""
    assume(len(expected) != DIGEST_SIZES[algorithm])
    with pytest.raises(ValueError):
        parse_checksum(f"{algorithm} {base64.b64encode(expected).decode('ascii')}")


@PARSERS
@given(valid_checksums(), invalid_base64())
def test_checksum_invalid_base64_rejected(pair: tuple[str, bytes], encoded: str) -> None:
    """A digest that is not valid base64 is refused."""
    with pytest.raises(ValueError):
        parse_checksum(f"{pair[0]} {encoded}")


@PARSERS
@given(valid_checksums())
def test_checksum_without_separating_space_rejected(pair: tuple[str, bytes]) -> None:
    """Algorithm and digest must be separated by exactly one space."""
    algorithm, expected = pair
    encoded = base64.b64encode(expected).decode("ascii")
    for raw in (algorithm + encoded, algorithm, encoded, f"{algorithm}\t{encoded}", f"{algorithm} {encoded} {encoded}"):
        with pytest.raises(ValueError):
            parse_checksum(raw)


# parse_concat ----------------------------------------------------------------------------


@PARSERS
@given(anything | st.text(max_size=200).map(lambda s: "final;" + s))
@example("final;http://[::1")
@example("final;http://[")
def test_concat_only_raises_value_error(raw: str) -> None:
    """Arbitrary text: a result or ValueError, never another exception."""
    raises_only_value_error(parse_concat, raw)


def url_for(upload_id: str, style: str) -> str:
    return {
        "absolute": f"https://tus.example.org/files/{upload_id}",
        "absolute-port": f"http://127.0.0.1:8000/files/{upload_id}",
        "relative": f"/files/{upload_id}",
        "nested": f"/api/v1/uploads/{upload_id}",
        "trailing-slash": f"/files/{upload_id}/",
        "query": f"/files/{upload_id}?x=1",
    }[style]


STYLES = ["absolute", "absolute-port", "relative", "nested", "trailing-slash", "query"]


@PARSERS
@given(st.lists(st.tuples(upload_ids, st.sampled_from(STYLES)), min_size=1, max_size=10), st.sampled_from([" ", "  "]))
def test_concat_final_round_trip(entries: list[tuple[str, str]], separator: str) -> None:
    """``final;<url> <url> ...`` gives the upload ids in order (repeats kept), for absolute and relative URLs."""
    raw = "final;" + separator.join(url_for(i, style) for i, style in entries)
    assert parse_concat(raw) == ("final", [i for i, _ in entries])


def test_concat_partial() -> None:
    """``partial`` is a partial upload with no URLs."""
    assert parse_concat("partial") == ("partial", [])


@PARSERS
@given(st.text(alphabet=" ", max_size=5))
def test_concat_final_without_urls_rejected(spaces: str) -> None:
    """``final;`` with zero URLs is refused."""
    with pytest.raises(ValueError):
        parse_concat("final;" + spaces)


@PARSERS
@given(
    st.sampled_from(
        [
            "final",
            "Final;/files/a",
            "FINAL;/files/a",
            "Partial",
            "partial ",
            " partial",
            "partial;/files/a",
            "final:/files/a",
        ]
    )
)
def test_concat_wrong_kind_rejected(raw: str) -> None:
    """Only exactly ``partial`` or ``final;...`` are accepted (case-sensitive)."""
    with pytest.raises(ValueError):
        parse_concat(raw)


@PARSERS
@given(st.text(min_size=1, max_size=20).filter(lambda s: any(c not in ID_ALPHABET for c in s)))
def test_concat_url_that_names_no_upload_id_rejected(segment: str) -> None:
    """A URL whose last path segment is not an upload id is refused (no path tricks reach the data store)."""
    # (urlsplit drops tab and newline characters; HTTP header values cannot carry newlines anyway.)
    assume(not set(segment) & set(" /?#\t\r\n"))
    with pytest.raises(ValueError):
        parse_concat(f"final;/files/{segment}")


# parse_uint ------------------------------------------------------------------------------


@PARSERS
@given(anything | st.none())
def test_uint_only_raises_value_error(raw: str | None) -> None:
    """Arbitrary text or None: an int or ValueError, never another exception."""
    raises_only_value_error(parse_uint, "Upload-Offset", raw)


@PARSERS
@given(st.integers(min_value=0, max_value=MAX_UINT))
@example(0)
@example(MAX_UINT)
def test_uint_round_trip(number: int) -> None:
    """Every value from 0 to 2**63-1 parses back."""
    assert parse_uint("Upload-Length", str(number)) == number


@PARSERS
@given(st.integers(min_value=MAX_UINT + 1, max_value=10**40))
@example(MAX_UINT + 1)
@example(10**19 - 1)
def test_uint_too_large_rejected(number: int) -> None:
    """Values beyond a 64-bit file offset are refused."""
    with pytest.raises(ValueError):
        parse_uint("Upload-Length", str(number))


@PARSERS
@given(st.integers(min_value=1, max_value=MAX_UINT))
def test_uint_negative_rejected(number: int) -> None:
    """Negative numbers are refused."""
    with pytest.raises(ValueError):
        parse_uint("Upload-Offset", f"-{number}")


@PARSERS
@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["+{}", " {}", "{} ", "{}.0", "{}e0", "0x{}", "{}_0", "\t{}", "{}\n"]),
)
def test_uint_decorated_numbers_rejected(number: int, shape: str) -> None:
    """Signs, whitespace, decimals, exponents, hex and underscores are refused."""
    with pytest.raises(ValueError):
        parse_uint("Upload-Offset", shape.format(number))


@PARSERS
@given(st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=5))
def test_uint_non_ascii_digits_rejected(digits: str) -> None:
    """int() would accept Arabic-Indic or full-width digits; the header parser must not."""
    assume(not all(c in string.digits for c in digits))
    with pytest.raises(ValueError):
        parse_uint("Upload-Offset", digits)


def test_uint_missing_header_rejected() -> None:
    """A missing header is refused with its name in the message."""
    with pytest.raises(ValueError, match="Upload-Offset"):
        parse_uint("Upload-Offset", None)
