"""`load_text_datasets`: where the training and validation text come from, and its errors on bad files."""

import json

import pytest

from hf_ext.data import load_text_datasets


def _jsonl(path, texts, key="text"):
    path.write_text("\n".join(json.dumps({key: t}) for t in texts) + "\n")
    return str(path)


def test_validation_file_is_used_whatever_the_training_data(tmp_path):
    valid = tmp_path / "valid.txt"
    valid.write_text("my own validation line\nanother one\n\nsecond document\n")
    # embedded corpus for training, the user's file for validation (it used to be ignored silently)
    train, val = load_text_datasets(validation_file=str(valid))
    assert val["text"] == ["my own validation line\nanother one", "second document"] and len(train) > 100
    # the two files may have different formats: each is read with the builder of its own extension
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    train, val = load_text_datasets(train_file=train_file, validation_file=str(valid))
    assert train["text"] == [f"doc {i}" for i in range(10)] and len(val) == 2


def test_bad_validation_and_tiny_training_files_name_the_flag(tmp_path):
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    other = _jsonl(tmp_path / "valid.jsonl", ["x", "y"], key="content")
    with pytest.raises(ValueError, match="validation data has no column 'text'"):
        load_text_datasets(train_file=train_file, validation_file=other)
    bad_ext = tmp_path / "valid.xml"
    bad_ext.write_text("<a/>")
    with pytest.raises(ValueError, match="--validation_file.*extension"):
        load_text_datasets(train_file=train_file, validation_file=str(bad_ext))
    one = tmp_path / "one.txt"
    one.write_text("a single line\n")
    with pytest.raises(ValueError, match=r"\(a \.txt file separates them by blank lines\).*--validation_file"):
        load_text_datasets(train_file=str(one))
    train, val = load_text_datasets(train_file=str(one), validation_file=str(one))
    assert len(train) == len(val) == 1


def test_a_txt_file_holds_one_document_per_paragraph_with_its_line_breaks(tmp_path):
    """A .txt file used to be read one line per document: its line breaks were dropped, an EOS was packed after every
    line, blank lines became bare EOS documents and the held-out split drew single lines out of training documents."""
    from hf_ext.data import build_tokenizer, pack_dataset
    from hf_ext.recipes.grape import _load_file

    docs = [f"Document {i}, first line.\nDocument {i}, second line.\nDocument {i}, third line." for i in range(40)]
    path = tmp_path / "docs.txt"
    # three newlines between two documents, trailing blank and whitespace-only lines: no document, no stray newline
    path.write_text("\n\n".join(docs[:20]) + "\n\n\n" + "\n\n".join(docs[20:]) + "\n\n\n   \n")
    train, val = load_text_datasets(train_file=str(path))
    assert len(train) + len(val) == 40 and len(val) == 2
    assert sorted([*train["text"], *val["text"]]) == sorted(docs)  # whole documents, line breaks kept
    tok = build_tokenizer(300)
    packed = pack_dataset(val, tok, block_size=8, drop_remainder=False)
    stream = [i for block in packed["input_ids"] for i in block]
    assert stream.count(tok.eos_token_id) == 2 and "\n" in tok.decode(stream)
    assert _load_file(str(path), "body")["body"] == docs  # grape's sources and targets, in file order
    # a line of spaces or tabs (an editor's trailing whitespace) separates documents like an empty one; CRLF too
    path.write_bytes(b"doc1 line a\r\ndoc1 line b\r\n   \r\ndoc2\n\t\n\n  indented doc3\n")
    assert _load_file(str(path), "text")["text"] == ["doc1 line a\ndoc1 line b", "doc2", "  indented doc3"]
    # whitespace with no line break after it, at the file's start or end, is a document of its own: it is dropped
    path.write_text("   \n\nfirst doc\nline two\n\n\t \n\nsecond\n\n   ")
    assert _load_file(str(path), "text")["text"] == ["first doc\nline two", "second"]


def test_file_without_rows_is_refused_naming_the_flag(tmp_path):
    """da35 F1: a file that parses but holds no row was refused with datasets' bare 'Instruction "train" corresponds
    to no data!' (no flag, no path)."""
    from hf_ext.data.loading import load_dataset_or_folder

    header = tmp_path / "header.csv"
    header.write_text("text,url\n")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    with pytest.raises(ValueError, match=r"--train_file=.*header\.csv' holds no row"):
        load_text_datasets(train_file=str(header))
    with pytest.raises(ValueError, match=r"--validation_file=.*blank\.jsonl' holds no row"):
        load_text_datasets(train_file=train_file, validation_file=str(blank))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.csv").write_text("text\n")
    with pytest.raises(ValueError, match=r"--dataset_name=.*folder' holds no row"):
        load_dataset_or_folder(str(folder))


def test_txt_byte_order_mark_is_not_text(tmp_path):
    """da35 F2: a .txt file's UTF-8 byte-order mark became text of its first document (JSON / CSV readers drop it)."""
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello\n\nworld\n".encode())
    train, val = load_text_datasets(train_file=train_file, validation_file=str(bom))
    assert val["text"] == ["hello", "world"]


def test_dataset_name_folder_of_txt_files_is_read_by_paragraph(tmp_path):
    """da35 F4: a --dataset_name folder of .txt files was read by datasets' text builder one document per line (blank
    lines as empty documents, packed as lone EOS), while the same file as --train_file is one document per
    blank-line-separated paragraph."""
    folder = tmp_path / "folder"
    folder.mkdir()
    body = "".join(f"doc {i} line one\nline two\n\n" for i in range(20))
    (folder / "train.txt").write_text(body)
    train, val = load_text_datasets(dataset_name=str(folder))
    docs = sorted(list(train["text"]) + list(val["text"]))
    assert docs == sorted(f"doc {i} line one\nline two" for i in range(20))
    by_file, _ = load_text_datasets(train_file=str(folder / "train.txt"))
    assert sorted(by_file["text"]) == sorted(train["text"])
