"""download_cifar10 against a tiny archive served on 127.0.0.1 by the test."""
import functools
import http.server
import os
import threading

import numpy as np
import pytest

from minires.data import CorruptDataError, cifar, download_cifar10, load_cifar10
from minires.data.download import CIFAR10_MD5, CIFAR10_URL
from tests.data import TRAIN_FILES, expected_nhwc, md5_of, python_batches, python_members, write_tar


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/served over HTTP on an ephemeral port of 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def tiny(server):
    """A tiny python-format archive on the server: (url, md5, batches)."""
    served, base = server
    batches = python_batches(np.random.default_rng(11))
    path = write_tar(served / "cifar-10-python.tar.gz", python_members(batches))
    return f"{base}/cifar-10-python.tar.gz", md5_of(path), batches, path


def test_defaults_are_torchvisions():
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_download_streams_checks_and_renames(tiny, tmp_path):
    url, md5, _, source = tiny
    root = tmp_path / "root"
    path = download_cifar10(root, url=url, md5=md5, progress=False)
    assert path == str(root / "cifar-10-python.tar.gz")
    assert open(path, "rb").read() == source.read_bytes()
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]  # no temp file left


def test_a_present_file_with_the_right_md5_is_not_fetched_again(tiny, tmp_path):
    url, md5, _, _ = tiny
    download_cifar10(tmp_path, url=url, md5=md5, progress=False)
    download_cifar10(tmp_path, url=url, md5=md5, progress=False)
    assert len(_Handler.requests) == 1


def test_wrong_md5_is_an_error_and_leaves_no_file(tiny, tmp_path):
    url, md5, _, _ = tiny
    root = tmp_path / "root"
    with pytest.raises(CorruptDataError, match=f"{url} failed its MD5 check: expected 0{{32}}, "
                                               f"got {md5}"):
        download_cifar10(root, url=url, md5="0" * 32, progress=False)
    assert os.listdir(root) == []


def test_a_missing_url_is_an_error_naming_it(server, tmp_path):
    _, base = server
    with pytest.raises(OSError, match=f"could not download {base}/nothing.tar.gz: HTTP Error 404"):
        download_cifar10(tmp_path, url=f"{base}/nothing.tar.gz", md5=None, progress=False)
    assert os.listdir(tmp_path) == ["served"]


def test_progress_bar_does_not_break_the_download(tiny, tmp_path, capsys):
    url, md5, _, _ = tiny
    download_cifar10(tmp_path / "root", url=url, md5=md5, progress=True)
    assert os.path.isfile(tmp_path / "root" / "cifar-10-python.tar.gz")


def test_load_cifar10_downloads_when_asked_and_nothing_is_there(tiny, tmp_path, monkeypatch):
    url, md5, batches, _ = tiny
    monkeypatch.setattr(cifar, "CIFAR10_URL", url)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(root, "train")
    images, labels, _ = load_cifar10(root, "train", download=True)
    want_images, want_labels = expected_nhwc(batches, TRAIN_FILES)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    load_cifar10(root, "test", download=True)  # already there: no second request
    assert len(_Handler.requests) == 1
