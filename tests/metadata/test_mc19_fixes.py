"""Fixes of the mc19 metadata audit (findings 2-4; finding 1, the reproduction's speed-up control, is tested in
tests/test_reproduce_metadata_control.py).

2. `collator(ds[:n])` (a `datasets` slice: a dict of columns) failed with a raw `KeyError: 0`.
3. The exported `url_host` / `url_path` did not read bytes or `None` as the templates do: a raw `TypeError` ("a
   bytes-like object is required") for `url_host`, the bytes `b'/x'` from `url_path`.
4. `MetadataCollator(conditioning=False)` with `MetadataCooldownCallback` logged `metadata_conditioning: 1` for steps
   trained without metadata.
"""


import pytest

from hf_ext.metadata import (
    InvalidMetadataError,
    metadata_template,
    url_host,
    url_path,
)

# ---------------------------------------------------------------------------------------------------------------------
# 3. url_host / url_path read their value as the templates do


@pytest.mark.parametrize("wrap", [bytes, bytearray])
def test_helpers_decode_bytes_as_the_templates(wrap):
    url = wrap(b" https://En.Wikipedia.org/wiki/Bern?a=1#H\n")
    assert url_host(url) == "en.wikipedia.org" == metadata_template("url_host")({"url": url})
    path = url_path(url)
    assert path == "/wiki/Bern?a=1#H" == metadata_template("url_path")({"url": url})
    assert isinstance(path, str)


@pytest.mark.parametrize("value", [None, "", "  \n", float("nan"), b"  "])
@pytest.mark.parametrize("helper, kind", [(url_host, "url_host"), (url_path, "url_path")])
def test_helpers_read_a_missing_value_as_no_metadata(helper, kind, value):
    assert helper(value) == "" == metadata_template(kind)({"url": value})


@pytest.mark.parametrize("value", [True, 3, 2.5, ["a.com"]])
@pytest.mark.parametrize("helper", [url_host, url_path])
def test_helpers_refuse_non_str_values_by_name(helper, value):
    with pytest.raises(InvalidMetadataError, match=rf"{helper.__name__}\(url\) needs a str \(or UTF-8 bytes\) URL"):
        helper(value)


@pytest.mark.parametrize("helper", [url_host, url_path])
def test_helpers_refuse_non_utf8_bytes_by_name(helper):
    with pytest.raises(InvalidMetadataError, match=rf"{helper.__name__}\(url\) got bytes that are not UTF-8"):
        helper(b"https://a.org/\xff")


def test_helpers_still_parse_str_urls():
    assert url_host("www.site.com/page") == "www.site.com"
    assert url_path("site.com:8080/x?q=1") == "/x?q=1"
    with pytest.raises(InvalidMetadataError, match="has no host"):
        url_host("/a/b")


