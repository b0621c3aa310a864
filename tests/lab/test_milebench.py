"""The MileBench-format loader, on a tiny two-dataset sample written in ``tmp_path``."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from videoqa.lab.milebench import load, load_dataset, option_label
from videoqa.lab.sample import Sample, is_correct
from videoqa.worker.types import MediaKind

MC_INSTRUCTIONS = ["Watch the frames of the activity.", "Look at the images in order."]
OE_INSTRUCTIONS = ["Describe what changes between the images."]


def _image(path: Path, colour: tuple[int, int, int], fmt: str) -> bytes:
    """Write a small solid-colour image and return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _write_json(folder: Path, doc: object, name: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (name or f"{folder.name}.json")).write_text(json.dumps(doc), encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> dict:
    """Two datasets: ActionSequence (multi-choice, 3 items) and Captioning (open-ended, 2 items)."""
    mc = tmp_path / "ActionSequence"
    images = {
        "0a": _image(mc / "images" / "s0_a.png", (255, 0, 0), "PNG"),
        "0b": _image(mc / "images" / "s0_b.jpg", (0, 255, 0), "JPEG"),
        "1a": _image(mc / "images" / "s1_a.png", (0, 0, 255), "PNG"),
        # Nested release layout: images/<sample_id>/<file>.
        "2a": _image(mc / "images" / "2" / "frame1.png", (255, 255, 0), "PNG"),
        "2b": _image(mc / "images" / "2" / "frame2.png", (0, 255, 255), "PNG"),
        "2c": _image(mc / "images" / "2" / "frame3.jpg", (255, 0, 255), "JPEG"),
    }
    _write_json(
        mc,
        {
            "meta_data": {
                "dataset": "ActionSequence",
                "task_instruction": MC_INSTRUCTIONS,
                "question_type": "multi-choice",
            },
            "data": [
                {
                    "sample_id": 0,
                    "task_instruction_id": 0,
                    "task_instance": {
                        "context": "First {image#1} then {image#2} What did the person do next?",
                        "images_path": ["s0_a.png", "s0_b.jpg"],
                        "choice_list": ["Opened the door.", "Picked up the cup.", "Sat down."],
                    },
                    "response": "Picked up the cup.",
                },
                {
                    "sample_id": 1,
                    "task_instruction_id": 1,
                    "task_instance": {
                        "context": "{image#1}\nWhich colour dominates?",
                        "images_path": ["s1_a.png"],
                        "choice_list": ["Red", "Green", "Blue"],
                    },
                    "response": "C",  # already a letter
                },
                {
                    "sample_id": 2,
                    "task_instruction_id": 0,
                    "task_instance": {
                        "context": "{image#1}{image#2}{image#3} What is the last action?",
                        "images_path": ["frame1.png", "frame2.png", "frame3.jpg"],
                        "choice_list": ["Walks away", "Waves goodbye"],
                    },
                    "response": "waves goodbye",  # differs from the option text in case only
                },
            ],
        },
    )
    oe = tmp_path / "Captioning"
    images |= {
        "c0a": _image(oe / "images" / "a.png", (10, 20, 30), "PNG"),
        "c0b": _image(oe / "images" / "b.png", (200, 100, 50), "PNG"),
        "c1a": _image(oe / "images" / "c.jpg", (90, 90, 90), "JPEG"),
    }
    _write_json(
        oe,
        {
            "meta_data": {"dataset": "Captioning", "task_instruction": OE_INSTRUCTIONS, "question_type": "open-ended"},
            "data": [
                {
                    "sample_id": 10,
                    "task_instruction_id": 0,
                    "task_instance": {
                        "context": "{image#1} and {image#2}: what changed?",
                        "images_path": ["a.png", "b.png"],
                    },
                    "response": "The light turned on.",
                },
                {
                    "sample_id": 11,
                    "task_instruction_id": 0,
                    # Path relative to the dataset folder rather than to images/.
                    "task_instance": {"context": "{image#1} What is shown?", "images_path": ["images/c.jpg"]},
                    "response": "A grey wall.",
                },
            ],
        },
    )
    return {"root": tmp_path, "images": images}


def _by_id(samples: list[Sample]) -> dict[str, Sample]:
    return {s.sample_id: s for s in samples}


def test_load_all_datasets(root):
    samples = load(root["root"])
    assert [s.sample_id for s in samples] == [
        "ActionSequence/0",
        "ActionSequence/1",
        "ActionSequence/2",
        "Captioning/10",
        "Captioning/11",
    ]
    for s in samples:
        assert s.kind is MediaKind.IMAGES
        assert s.needle is None
        assert s.num_frames == len(s.media)
        assert "{image#" not in s.question
        assert s.family == s.sample_id.split("/")[0]


def test_multi_choice_questions_and_answers(root):
    samples = _by_id(load_dataset(root["root"] / "ActionSequence"))
    assert len(samples) == 3

    first = samples["ActionSequence/0"]
    assert first.question == (
        "Watch the frames of the activity.\n"
        "First then What did the person do next?\n"
        "Options:\nA. Opened the door.\nB. Picked up the cup.\nC. Sat down.\n"
        "Answer with the option's letter."
    )
    assert (first.answer, first.aliases) == ("B", ["Picked up the cup."])

    second = samples["ActionSequence/1"]
    assert second.question.startswith(MC_INSTRUCTIONS[1] + "\nWhich colour dominates?\nOptions:\nA. Red\n")
    assert (second.answer, second.aliases) == ("C", ["Blue"])

    third = samples["ActionSequence/2"]
    assert "A. Walks away\nB. Waves goodbye" in third.question
    assert (third.answer, third.aliases) == ("B", ["Waves goodbye"])


def test_media_bytes_in_order(root):
    images = root["images"]
    samples = _by_id(load(root["root"]))
    assert samples["ActionSequence/0"].media == [images["0a"], images["0b"]]
    assert samples["ActionSequence/1"].media == [images["1a"]]
    assert samples["ActionSequence/2"].media == [images["2a"], images["2b"], images["2c"]]
    assert samples["ActionSequence/2"].num_frames == 3
    assert samples["Captioning/10"].media == [images["c0a"], images["c0b"]]
    assert samples["Captioning/11"].media == [images["c1a"]]
    assert len({bytes(b) for s in samples.values() for b in s.media}) == len(images)  # all distinct


def test_open_ended(root):
    samples = _by_id(load_dataset(root["root"] / "Captioning"))
    s = samples["Captioning/10"]
    assert s.question == OE_INSTRUCTIONS[0] + "\nand : what changed?"
    assert "Options:" not in s.question
    assert (s.answer, s.aliases) == ("The light turned on.", [])
    assert is_correct("the light turned on", s)
    assert not is_correct("The light turned off.", s)


@pytest.mark.parametrize("prediction", ["B", "b.", "B. Picked up the cup.", "Picked up the cup", "(B)"])
def test_is_correct_accepts(root, prediction):
    s = _by_id(load_dataset(root["root"] / "ActionSequence"))["ActionSequence/0"]
    assert is_correct(prediction, s)


@pytest.mark.parametrize("prediction", ["C", "c.", "Sat down.", "Opened the door", "", "Bc"])
def test_is_correct_rejects(root, prediction):
    s = _by_id(load_dataset(root["root"] / "ActionSequence"))["ActionSequence/0"]
    assert not is_correct(prediction, s)


def test_is_correct_letter_a(tmp_path):
    """The bare letter "A" is an answer, not an article."""
    folder = tmp_path / "D"
    _image(folder / "images" / "x.png", (1, 2, 3), "PNG")
    item = {"sample_id": 0, "task_instance": {"context": "?", "images_path": ["x.png"], "choice_list": ["yes", "no"]}}
    _write_json(folder, {"meta_data": {"task_instruction": ["Say."]}, "data": [{**item, "response": "yes"}]})
    (s,) = load_dataset(folder)
    assert s.answer == "A"
    assert is_correct("A", s) and is_correct("a.", s) and is_correct("yes", s) and not is_correct("B", s)


def test_limit(root):
    assert [s.sample_id for s in load_dataset(root["root"] / "ActionSequence", limit=2)] == [
        "ActionSequence/0",
        "ActionSequence/1",
    ]
    assert load_dataset(root["root"] / "ActionSequence", limit=0) == []
    per = load(root["root"], limit_per_dataset=1)
    assert [s.sample_id for s in per] == ["ActionSequence/0", "Captioning/10"]
    with pytest.raises(ValueError, match="limit"):
        load_dataset(root["root"] / "ActionSequence", limit=-1)


def test_datasets_filter(root):
    assert [s.sample_id for s in load(root["root"], datasets=["Captioning"])] == ["Captioning/10", "Captioning/11"]
    assert len(load(root["root"], datasets=["Captioning", "ActionSequence"])) == 5
    assert load(root["root"], datasets=[]) == []
    with pytest.raises(ValueError, match="Nope"):
        load(root["root"], datasets=["Nope"])


def test_only_json_in_folder_is_used(tmp_path):
    folder = tmp_path / "Renamed"
    png = _image(folder / "images" / "x.png", (1, 2, 3), "PNG")
    item = {"sample_id": 5, "task_instance": {"context": "{image#1} Q?", "images_path": ["x.png"]}, "response": "R"}
    _write_json(folder, {"meta_data": {"task_instruction": ["I."]}, "data": [item]}, name="other.json")
    (s,) = load_dataset(folder)
    assert (s.sample_id, s.family, s.question, s.answer, s.media) == ("Renamed/5", "Renamed", "I.\nQ?", "R", [png])


def test_skips_items_without_images_or_unmatched_gold(tmp_path, caplog):
    folder = tmp_path / "D"
    _image(folder / "images" / "x.png", (1, 2, 3), "PNG")
    data = [
        {"sample_id": 0, "task_instance": {"context": "text only"}, "response": "r"},
        {"sample_id": 1, "task_instance": {"context": "text only", "images_path": []}, "response": "r"},
        {"sample_id": 2, "task_instance": {"context": "{image#1}", "images_path": ["x.png"], "choice_list": ["p", "q"]},
         "response": "neither"},
        {"sample_id": 3, "task_instance": {"context": "{image#1}", "images_path": ["x.png"]}, "response": "ok"},
    ]  # fmt: skip
    _write_json(folder, {"meta_data": {"task_instruction": ["I."]}, "data": data})
    with caplog.at_level(logging.WARNING, logger="videoqa.lab.milebench"):
        samples = load_dataset(folder)
    assert [s.sample_id for s in samples] == ["D/3"]
    assert "skipped 2 item(s) without images and 1 " in caplog.text


def test_error_no_json(tmp_path):
    (tmp_path / "Empty" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="no JSON file"):
        load_dataset(tmp_path / "Empty")


def test_error_malformed_json(tmp_path):
    _write_json(tmp_path / "NoData", {"meta_data": {"task_instruction": ["I."]}})
    with pytest.raises(ValueError, match='"data"'):
        load_dataset(tmp_path / "NoData")
    (tmp_path / "Broken").mkdir()
    (tmp_path / "Broken" / "Broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not readable JSON"):
        load_dataset(tmp_path / "Broken")


def test_error_missing_image(root):
    (root["root"] / "ActionSequence" / "images" / "2" / "frame2.png").unlink()
    with pytest.raises(ValueError, match=r"images/2/frame2\.png"):
        load_dataset(root["root"] / "ActionSequence")
    # The item before it loads fine when the limit stops short of it.
    assert len(load_dataset(root["root"] / "ActionSequence", limit=2)) == 2


def test_error_unknown_instruction_id(tmp_path):
    folder = tmp_path / "D"
    _image(folder / "images" / "x.png", (1, 2, 3), "PNG")
    item = {"sample_id": 0, "task_instruction_id": 7, "task_instance": {"images_path": ["x.png"]}, "response": "r"}
    _write_json(folder, {"meta_data": {"task_instruction": ["I."]}, "data": [item]})
    with pytest.raises(ValueError, match="task_instruction_id 7"):
        load_dataset(folder)


def test_error_bad_root(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no dataset folders"):
        load(tmp_path)


def test_option_labels():
    assert [option_label(i) for i in (0, 1, 25, 26, 27, 51, 52)] == ["A", "B", "Z", "AA", "AB", "AZ", "BA"]
