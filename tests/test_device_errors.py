"""--device cuda without CuPy or without a GPU is a clear error, not a traceback."""
import pytest

from minires import backend
from minires.cli import main


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is available here")
@pytest.mark.parametrize("cmd", [["train", "--data", "nowhere", "--device", "cuda"],
                                 ["eval", "--checkpoint", "nowhere.ckpt", "--device", "cuda"]])
def test_cuda_without_a_gpu_is_a_clear_error(cmd, capsys):
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err
    assert ("pip install 'minires[gpu]'" in err) or ("sees no CUDA GPU" in err)
