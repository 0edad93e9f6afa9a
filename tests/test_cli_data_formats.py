"""`redblue data info|verify|fetch` with CIFAR tarballs and user datasets: shapes and classes shown, bad input one `error:` line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cifar_fixtures import cifar_spec, tiny_cifar
from data_fixtures import http_mirror
from PIL import Image

from cli_helpers import check_error_stdout, one_error_line, run
from redblue import data
from redblue.cli import verbs_data


def test_info_lists_every_catalog_dataset_with_its_shape_and_classes(env, capsys):
    code, out, err = run(capsys, "data", "info")
    assert code == 0 and err == ""
    lines = out.splitlines()
    at = lines.index("cifar10: 0/1 files found")
    assert lines[at + 1 : at + 3] == ["  3x32x32 images, 10 classes, 50000 train / 10000 test",
                                      "  cifar-10-python.tar.gz: missing"]
    assert "  3x32x32 images, 100 classes, 50000 train / 10000 test" in lines
    assert lines[lines.index("mnist: 0/4 files found") + 1] == "  1x28x28 images, 10 classes, 60000 train / 10000 test"


def test_info_json_carries_shape_classes_splits_and_where_the_tarball_was_found(cifar_root, capsys):
    code, out, err = run(capsys, "data", "info", "tiny-cifar", "--data-dir", str(cifar_root), "--json")
    assert code == 0 and err == ""
    [entry] = json.loads(out)["datasets"]
    assert entry == {
        "name": "tiny-cifar", "kind": "cifar", "shape": [3, 32, 32], "n_classes": 10,
        "splits": {"train": 10, "test": 2}, "complete": True,
        "files": [{"filename": "cifar-10-python.tar.gz", "origin": "--data-dir",
                   "path": str(cifar_root / "tiny-cifar" / "cifar-10-python.tar.gz")}],
    }


def test_info_of_a_user_file_reads_it_and_shows_its_shape_classes_and_splits(tmp_path, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 8, 6, 3), np.uint8), y_train=np.array([0, 1, 1, 0]),
             x_test=np.zeros((2, 8, 6, 3), np.uint8), y_test=np.array([1, 0]), classes=np.array(["no", "yes"]))
    code, out, err = run(capsys, "data", "info", str(path))
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{path}: npz dataset at {path}", "  3x8x6 images, 2 classes (no, yes), 4 train / 2 test"]
    code, out, err = run(capsys, "data", "info", str(path), "--json")
    [entry] = json.loads(out)["datasets"]
    assert entry == {"name": str(path), "kind": "npz", "shape": [3, 8, 6], "n_classes": 2,
                     "splits": {"train": 4, "test": 2}, "path": str(path), "classes": ["no", "yes"],
                     "shared_split": False}


def test_info_of_an_image_folder_with_one_split(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "imgs" / label / "1.png")
    code, out, err = run(capsys, "data", "info", f"file:{tmp_path / 'imgs'}")
    assert code == 0 and out.splitlines()[1] == "  1x5x7 images, 2 classes (a, b), 2 images in one split, used as train and as test"


@pytest.mark.parametrize("as_json", [False, True])
def test_verify_a_cifar_tarball_good_then_corrupt(cifar_root, capsys, as_json):
    json_flag = ["--json"] if as_json else []
    code, out, err = run(capsys, "data", "verify", "tiny-cifar", "--data-dir", str(cifar_root), *json_flag)
    assert code == 0 and err == ""
    path = cifar_root / "tiny-cifar" / "cifar-10-python.tar.gz"
    if not as_json:
        assert out == f"good       tiny-cifar/cifar-10-python.tar.gz: {path} (--data-dir) [md5]\n"
    content = bytearray(path.read_bytes())
    content[100] ^= 1
    path.write_bytes(bytes(content))
    code, out, err = run(capsys, "data", "verify", "tiny-cifar", "--data-dir", str(cifar_root), *json_flag)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"error: 1 of 1 files are not good (1 corrupt); first: {path} is corrupt: "
                                         f"it fails its checksum (md5 ")
    if as_json:
        assert json.loads(out)["files"][0]["status"] == "corrupt"


@pytest.mark.parametrize("verb", ["info", "verify"])
@pytest.mark.parametrize(("case", "expected"), [
    ("labels out of range", "has label 5, outside 0..1 (2 classes)"),
    ("float labels", "is float64; labels must be integers"),
    ("NaN pixels", "pixel values outside [0, 1] (1 of them NaN)"),
    ("wrong shape", "has shape (2, 5, 5, 5); images must be"),
])
def test_a_bad_user_file_is_one_error_line_and_exit_2(tmp_path, capsys, verb, case, expected):
    x, y, classes = np.zeros((2, 4, 4), np.float32), np.array([0, 1]), np.array(["a", "b"])
    if case == "labels out of range":
        y = np.array([0, 5])
    elif case == "float labels":
        y = np.array([0.0, 1.0])
    elif case == "NaN pixels":
        x[1, 2, 3] = np.nan
    else:
        x = np.zeros((2, 5, 5, 5), np.uint8)
    path = tmp_path / "bad.npz"
    np.savez(path, x_test=x, y_test=y, classes=classes)
    code, out, err = run(capsys, "data", verb, str(path), "--json")
    line = one_error_line(err)
    assert code == 2 and expected in line and str(path) in line
    if verb == "info":
        check_error_stdout(out, line, code, as_json=True)
    else:
        assert json.loads(out)["files"][0]["status"] == "corrupt"


def test_mixed_image_sizes_in_a_folder_are_one_error_line(tmp_path, capsys):
    for label, width in (("a", 4), ("b", 5)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((4, width, 3), np.uint8)).save(tmp_path / "imgs" / label / "1.png")
    code, out, err = run(capsys, "data", "info", f"{tmp_path / 'imgs'}/")
    assert code == 2 and out == ""
    assert "every image of a dataset must have the same size" in one_error_line(err)


def test_a_refused_pickle_through_the_cli_is_one_line_and_runs_nothing(env, capsys, monkeypatch):
    marker = env / "marker"
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cposix\nsystem\nU" + bytes([len(command)]) + command + b"\x85R."  # os.system(command)
    made = tiny_cifar(replace={"cifar-10-batches-py/test_batch": evil})
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    (env / "root" / "tiny-cifar").mkdir(parents=True)
    (env / "root" / "tiny-cifar" / "cifar-10-python.tar.gz").write_bytes(made.data)
    code, out, err = run(capsys, "data", "verify", "tiny-cifar", "--data-dir", str(env / "root"))
    line = one_error_line(err)
    assert code == 2 and "was refused: its pickle asks for the global posix.system" in line
    assert not marker.exists()


def test_fetch_of_a_user_file_is_exit_2(tmp_path, capsys):
    code, out, err = run(capsys, "data", "fetch", str(tmp_path / "d.npz"))
    assert code == 2 and "is a user dataset (a path); only catalog datasets are downloaded" in one_error_line(err)


def test_fetch_a_tarball_from_a_mirror_then_find_it_present(env, capsys, monkeypatch):
    made = tiny_cifar()
    served = env / "served"
    served.mkdir()
    (served / "cifar-10-python.tar.gz").write_bytes(made.data)
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    with http_mirror(served) as mirror:
        argv = ["data", "fetch", "tiny-cifar", "--data-dir", str(env / "dl"), "--mirror", mirror.url, "--json"]
        code, out, err = run(capsys, *argv)
        assert code == 0 and [f["action"] for f in json.loads(out)["files"]] == ["downloaded"]
        code, out, err = run(capsys, *argv)
        assert code == 0 and [f["action"] for f in json.loads(out)["files"]] == ["present"]
        assert mirror.requests == ["/cifar-10-python.tar.gz"]


def test_require_dataset_leaves_a_user_dataset_to_the_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(verbs_data, "_may_ask", lambda: pytest.fail("asked to download a user dataset"))
    verbs_data.require_dataset(str(tmp_path / "nowhere.npz"), data_dir=None)  # loading it reports what is wrong
