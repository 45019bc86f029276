"""Pass-37 audit (dc43) regressions for the compliance package: clear early errors on public entry points."""

import pytest

from hf_ext.compliance import RobotsTxtStore, product_token, status_class
from hf_ext.compliance.rfc9309 import RobotsTxt

ROBOTS = "User-agent: *\nDisallow: /x\n"


@pytest.mark.parametrize("body", [None, 5, ["User-agent: *", "Disallow: /"]])
def test_robots_txt_parse_names_a_body_that_is_no_text(body):
    # was a raw "object of type 'NoneType' has no len()" (or "'list' ... has no attribute ...")
    with pytest.raises(TypeError, match="body must be the robots.txt as str or bytes"):
        RobotsTxt.parse(body)


def test_robots_txt_parse_still_reads_str_bytes_and_bytearray():
    for body in (ROBOTS, ROBOTS.encode(), bytearray(ROBOTS.encode())):
        parsed = RobotsTxt.parse(body)
        assert not parsed.allowed("http://a.com/x", "GPTBot") and parsed.allowed("http://a.com/y", "GPTBot")


@pytest.mark.parametrize("url", [None, b"http://a.com/x", 5])
def test_robots_txt_allowed_names_a_url_that_is_no_str(url):
    # was a raw AttributeError ("'NoneType' object has no attribute 'startswith'")
    with pytest.raises(TypeError, match="url must be a str"):
        RobotsTxt.parse(ROBOTS).allowed(url, "GPTBot")


def test_product_token_names_an_agent_that_is_no_str():
    with pytest.raises(TypeError, match="agent must be a crawler name"):
        product_token(5)
    assert product_token("CCBot/2.0") == "ccbot"


@pytest.mark.parametrize("status", ["200", 200.0, "503"])
def test_status_class_names_a_status_that_is_no_int(status):
    # "200" was a raw "'<=' not supported between instances of 'int' and 'str'"; 200.0 was read as a status
    with pytest.raises(TypeError, match="status must be an int HTTP status"):
        status_class("User-agent: *", status)


def test_status_class_still_takes_ints_and_numpy_ints():
    np = pytest.importorskip("numpy")
    assert status_class("x", 200) == "available"
    assert status_class("x", np.int64(503)) == "unreachable"
    assert status_class(None, 404) == "unavailable"


def _filter():
    pytest.importorskip("datatrove")
    from hf_ext.compliance.datatrove_filter import RobotsTxtFilter

    return RobotsTxtFilter


@pytest.mark.parametrize("writer", ["removed/", 5])
def test_datatrove_filter_refuses_an_exclusion_writer_that_is_no_disk_writer(writer):
    # was accepted, then every task failed when datatrove opened it ("'str' object does not support the context
    # manager protocol"), after the executor had started
    RobotsTxtFilter = _filter()
    with pytest.raises(TypeError, match="exclusion_writer must be a datatrove DiskWriter"):
        RobotsTxtFilter({"a.com": ROBOTS}, exclusion_writer=writer)


def test_datatrove_filter_names_what_robots_may_be():
    RobotsTxtFilter = _filter()
    with pytest.raises(TypeError, match="snapshot path"):
        RobotsTxtFilter(None)


def test_datatrove_filter_names_the_document_whose_url_is_no_str(tmp_path):
    RobotsTxtFilter = _filter()
    from datatrove.data import Document
    from datatrove.pipeline.writers import JsonlWriter

    step = RobotsTxtFilter(RobotsTxtStore.from_dict({"a.com": ROBOTS}), exclusion_writer=JsonlWriter(str(tmp_path)))
    docs = [
        Document(text="a", id="ok", metadata={"url": "http://a.com/y"}),
        Document(text="b", id="doc-7", metadata={"url": 12345}),
    ]
    with pytest.raises(TypeError, match="got int: document 'doc-7' has metadata\\['url'\\] = 12345"):
        list(step.run(iter(docs)))
    kept = list(step.run(iter([Document(text="c", id="n", metadata={"url": None}), docs[0]])))
    assert [d.id for d in kept] == ["n", "ok"]


def test_the_conformance_module_reads_its_arguments(capsys):
    """`python -m hf_ext.compliance.conformance --help` (or any argument) printed the table, ignoring it."""
    from hf_ext.compliance.conformance import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "Takes no arguments" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--engine", "google"])
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["url_column", "text_column", "domain_column"])
def test_a_run_refused_on_a_column_leaves_no_output_folder_it_created(tmp_path, flag):
    """The writability check created --output_dir before the dataset's columns were known: a wrong column flag was
    refused and left an empty folder behind. A folder that existed before stays."""
    from hf_ext.recipes.compliance import ComplianceArguments, run

    out = tmp_path / "new" / "out"
    with pytest.raises(ValueError, match=rf"--{flag}='nope' is not a column"):
        run(ComplianceArguments(output_dir=str(out), **{flag: "nope"}))
    assert not out.parent.exists()  # nor its parent, created with it
    out.mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"--{flag}='nope' is not a column"):
        run(ComplianceArguments(output_dir=str(out), **{flag: "nope"}))
    assert out.is_dir()
