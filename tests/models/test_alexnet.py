"""torchvision's AlexNet: layout, torch parity through a .pth checkpoint, bad inputs."""
import numpy as np
import pytest

import torch  # noqa: E402  (a test dependency: missing must fail, not skip)

from minires import convert, models  # noqa: E402
from tests.helpers import assert_close, random_upstream, torch_tensor  # noqa: E402
from tests.models import torch_refs  # noqa: E402

NUM_CLASSES = 10


def n_params(module):
    return sum(p.size for p in module.parameters())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(minires AlexNet loaded from a torch checkpoint, the torch reference).
    Built once: 61M parameters each."""
    torch.manual_seed(0)
    ref = torch_refs.AlexNet(num_classes=NUM_CLASSES)
    path = tmp_path_factory.mktemp("alexnet") / "alexnet.pth"
    torch.save(ref.state_dict(), path)
    mr = convert.load_pretrained(models.alexnet(num_classes=NUM_CLASSES), path)
    return mr, ref


def test_parameter_counts(pair):
    mr, _ = pair
    full = models.AlexNet()  # 1000 classes
    assert n_params(full.classifier) == 58_631_144
    assert n_params(full) == 61_100_840
    assert n_params(mr.features) == 2_469_696


def test_state_dict_keys_and_repr_match_torchvision(pair):
    mr, ref = pair
    assert list(mr.state_dict()) == list(ref.state_dict())
    assert list(mr.state_dict())[-1] == "classifier.6.bias"
    for k, v in ref.state_dict().items():
        assert tuple(mr.state_dict()[k].shape) == tuple(v.shape), k
    assert repr(mr) == repr(ref)


@pytest.mark.parametrize("train", [True, False], ids=["train-no-dropout", "eval"])
def test_matches_torch_at_the_minimum_size(pair, train):
    mr, ref = pair
    # Dropout masks cannot match torch's; training is compared with p=0, eval
    # (where dropout is the identity) with the default p=0.5.
    p = 0.0 if train else 0.5
    for net in (mr, ref):
        net.classifier[0].p = net.classifier[3].p = p
        net.train(train)
        net.zero_grad()
    x = np.random.default_rng(0).standard_normal((2, 3, 63, 70)).astype(np.float32)
    xt = torch_tensor(x, requires_grad=True)
    logits_ref = ref(xt)
    g = random_upstream(np.random.default_rng(1), tuple(logits_ref.shape), np.float32)
    (logits_ref * torch.from_numpy(g)).sum().backward()

    logits = mr(x)
    assert_close(logits, logits_ref, 1e-4, "logits")
    assert_close(mr.backward(g), xt.grad, 1e-3, "dx")
    ref_params = dict(ref.named_parameters())
    for k, prm in mr.named_parameters():
        assert_close(prm.grad, ref_params[k].grad, 1e-3, k)
    assert not any(m._caches for m in mr.modules())


def test_dropout_is_active_in_training(pair):
    mr, _ = pair
    mr.train()
    mr.classifier[0].p = mr.classifier[3].p = 0.5
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = mr(x), mr(x)
    assert not np.array_equal(a, b)
    mr.clear_caches()


def test_too_small_input_names_alexnet_and_the_minimum(pair):
    mr, _ = pair
    with pytest.raises(ValueError, match=r"AlexNet: input must be at least 63x63.*got 62x80"):
        mr(np.zeros((1, 3, 62, 80), np.float32))


def test_wrong_channel_count(pair):
    mr, _ = pair
    with pytest.raises(ValueError, match=r"AlexNet: expected 3 channels.*\(1, 4, 64, 64\)"):
        mr(np.zeros((1, 4, 64, 64), np.float32))
