"""The `classifier` model plugin: architectures, scores, state round trip, training, errors, runner."""
import numpy as np
import pytest
import torch

from benchbench import Split, TrainContext
from benchbench_plugins.classifiers import Classifier, build_network, random_crop_flip

pytestmark = pytest.mark.usefixtures("one_thread")

#: Tiny widths keep every test fast (googlenet has fixed widths).
TINY = {"small_cnn": 4, "resnet18": 4, "googlenet": None}


def quadrants(n, size=16, channels=1, seed=0):
    """Class k = which quadrant (0 TL, 1 TR, 2 BL, 3 BR) is bright, on a dark noisy background."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, size=(n, channels, size, size))
    h = size // 2
    for k, (r, c) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        sel = y == k
        x[sel, :, r:r + h, c:c + h] += 160
    return Split(x.clip(0, 255).astype(np.uint8), y.astype(np.int64), source="quadrants")


def images(n, c, h, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, h, h), dtype=np.uint8))


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("c,h", [(1, 28), (3, 32), (1, 8)])
def test_each_arch_scores_with_the_right_shapes(arch, c, h):
    m = Classifier(arch=arch, in_channels=c, num_classes=7, width=TINY[arch]).eval()
    out = m.score(images(3, c, h))
    feat_dim = {"small_cnn": 4 * 4, "resnet18": 8 * 4, "googlenet": 1024}[arch]
    assert set(out) == set(m.provides) == {"logits", "features"}
    assert out["logits"].shape == (3, 7) and out["features"].shape == (3, feat_dim)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    assert not out["logits"].requires_grad


def test_default_widths_and_params():
    m = Classifier(arch="small_cnn", in_channels=1)
    assert m.resolved_width == 32 and m.width is None
    assert m.score(images(2, 1, 28))["features"].shape == (2, 128)
    r = Classifier()
    assert (r.arch, r.in_channels, r.num_classes, r.resolved_width) == ("resnet18", 3, 10, 64)
    assert (r.batch_size, r.lr, r.momentum, r.weight_decay) == (128, 0.1, 0.9, 5e-4)
    assert (r.augment, r.crop_padding, r.eval_batch_size, r.epochs, r.steps) == ("auto", 4, 256, None, 40_000)
    from benchbench.api import get_params

    assert get_params(Classifier(arch="small_cnn", width=8, epochs=3))["epochs"] == 3


@pytest.mark.parametrize("arch", sorted(TINY))
def test_state_dict_round_trip_through_a_fresh_instance(arch):
    params = dict(arch=arch, in_channels=3, num_classes=5, width=TINY[arch], steps=2, batch_size=8)
    m = Classifier(**params)
    m.fit(quadrants(16, size=16, channels=3), TrainContext(progress=False, seed=3))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = Classifier(**params)
    fresh.load_state_dict(state)
    fresh.eval()
    x = images(4, 3, 32)
    a, b = m.score(x), fresh.score(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_small_cnn_learns_quadrants():
    train, test = quadrants(512, seed=0), quadrants(256, seed=1)
    m = Classifier(arch="small_cnn", in_channels=1, num_classes=4, width=8, epochs=4, batch_size=32,
                   lr=0.05, crop_padding=2)
    ctx = TrainContext(progress=False, seed=0)
    m.fit(train, ctx)
    assert not m.training
    pred = m.score(torch.from_numpy(test.images))["logits"].argmax(1).numpy()
    assert (pred == test.labels).mean() > 0.9
    assert ctx.curve and ctx.curve[-1]["step"] == 4 * (512 // 32)
    assert {"step", "train_loss", "train_acc"} <= set(ctx.curve[-1])
    assert [c["step"] for c in ctx.curve] == [50, 64]
    assert ctx.curve[-1]["train_loss"] < ctx.curve[0]["train_loss"] or ctx.curve[-1]["train_acc"] > 0.9


def test_fit_is_deterministic_and_leaves_the_global_rng_alone():
    data = quadrants(64)
    params = dict(arch="resnet18", in_channels=1, num_classes=4, width=4, steps=3, batch_size=16)

    def run(seed):
        return Classifier(**params).fit(data, TrainContext(progress=False, seed=seed)).state_dict()

    before = torch.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_googlenet_fit_is_deterministic_with_dropout():
    data = quadrants(8, size=8, channels=3)
    params = dict(arch="googlenet", in_channels=3, num_classes=4, steps=1, batch_size=4)
    a = Classifier(**params).fit(data, TrainContext(progress=False, seed=0)).state_dict()
    b = Classifier(**params).fit(data, TrainContext(progress=False, seed=0)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epochs_override_steps():
    ctx = TrainContext(progress=False)
    Classifier(arch="small_cnn", in_channels=1, num_classes=4, width=2, epochs=2, steps=1000,
               batch_size=16, augment="none").fit(quadrants(40), ctx)
    assert ctx.curve[-1]["step"] == 2 * (40 // 16)


def test_clear_errors():
    m = Classifier(arch="small_cnn", in_channels=3, num_classes=4, width=2, steps=1)
    ctx = TrainContext(progress=False)
    with pytest.raises(ValueError, match="needs class labels.*labels is None"):
        m.fit(Split(quadrants(8, channels=3).images, None, source="unlabelled"), ctx)
    with pytest.raises(ValueError, match=r"in_channels=3\) got 1-channel.*in_channels=1"):
        m.fit(quadrants(8, channels=1), ctx)
    with pytest.raises(ValueError, match=r"in_channels=3\) got 1-channel"):
        m.score(images(2, 1, 8))
    bad = quadrants(8, channels=3)
    with pytest.raises(ValueError, match=r"labels in \[0, 9\].*\[0, 4\)"):
        m.fit(Split(bad.images, np.arange(8) + 2 * (np.arange(8) == 7)), ctx)
    with pytest.raises(NotImplementedError, match="no likelihood"):
        m.log_prob(images(2, 3, 8).float())
    with pytest.raises(ValueError, match="googlenet.*width"):
        Classifier(arch="googlenet", width=16)
    with pytest.raises(ValueError, match="arch must be one of"):
        Classifier(arch="resnet50")
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        Classifier(in_channels=2)
    with pytest.raises(ValueError, match="augment must be one of"):
        Classifier(augment="flip")


def test_random_crop_flip_matches_a_reference():
    x = images(3, 2, 5)
    dy, dx, flip = torch.tensor([0, 2, 4]), torch.tensor([4, 1, 0]), torch.tensor([False, True, False])
    out = random_crop_flip(x, dy, dx, flip, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):
        ref = padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    assert torch.equal(random_crop_flip(x, torch.full((3,), 2), torch.full((3,), 2), None, 2), x)


SUITE = """
suite: clf
seed: 0
models:
  clf:
    use: classifier
    train: {data: digits, split: train}
    arch: small_cnn
    in_channels: 1
    width: 8
    epochs: 6
    batch_size: 64
    lr: 0.05
    crop_padding: 1
  made:
    use: made
    train: {data: digits, split: train}
    hidden: [16]
    steps: 2
datasets:
  digits: {use: digits}
  noise: {use: noise, n: 20, shape: [1, 8, 8]}
studies:
  ood:
    use: ood
    models: [made]
    in_distribution: {data: digits, fit: train, eval: test}
    ood: [noise]
    detectors: [ar-2sd]
"""


def test_runner_trains_saves_reloads_and_scores_on_digits(tmp_path):
    from benchbench.cache import Cache
    from benchbench.runner import RunContext
    from benchbench.suite import load_suite

    path = tmp_path / "clf.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    ctx = RunContext(suite=suite, cache=Cache(tmp_path / "cache"), progress=False)
    out = ctx.scores("clf", "digits", "test")
    assert out["logits"].shape == (360, 10) and out["features"].shape == (360, 32)
    assert np.isfinite(out["logits"]).all() and np.isfinite(out["features"]).all()
    assert (out["logits"].argmax(1) == out["labels"]).mean() > 0.8
    assert ctx.provenance["checkpoints"]["clf"]["source"] == "trained"
    assert ctx.curves["clf"][-1]["step"] == 6 * (1437 // 64)
    # a second run loads the checkpoint from the cache into a fresh instance and scores the same
    again = RunContext(suite=suite, cache=Cache(tmp_path / "cache"), progress=False)
    again._scores.clear()
    model = again.model("clf")
    assert again.provenance["checkpoints"]["clf"]["source"] == "cache"
    x = torch.from_numpy(ctx.load("digits", "test").images)
    assert np.array_equal(model.score(x)["logits"].numpy(), out["logits"])


DDP_TRAIN = '''
import sys, torch
import numpy as np
from benchbench import Split, TrainContext, distributed
from benchbench_plugins.classifiers import Classifier

torch.set_num_threads(1)
info = distributed.init("cpu")
rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, size=(64, 3, 8, 8), dtype=np.uint8), rng.integers(0, 4, 64)
model = Classifier(arch="small_cnn", in_channels=3, num_classes=4, width=4, steps=4, batch_size=8)
model.fit(Split(images, labels), TrainContext(seed=3, progress=False, dist=info))
torch.save(model.state_dict(), sys.argv[1] + f"/rank{info.rank}.pt")
distributed.shutdown()
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_data_parallel_keeps_the_ranks_weights_equal(tmp_path):
    """Two gloo ranks train on different halves of each global batch; DDP averages the gradients, so the
    weights stay identical on both ranks (BatchNorm running statistics are per rank)."""
    from test_distributed import torchrun

    script = tmp_path / "train.py"
    script.write_text(DDP_TRAIN)
    res = torchrun([str(script), str(tmp_path)])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    params = dict(Classifier(arch="small_cnn", in_channels=3, num_classes=4, width=4).named_parameters())
    assert set(params) < set(a)
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    init = {f"net.{k}": v for k, v in build_network("small_cnn", 3, 4, 4, seed=3).state_dict().items()}
    assert max((a[k] - init[k]).abs().max().item() for k in params) > 1e-3  # it did train
    assert any(not torch.equal(a[k], b[k]) for k in a if "running_mean" in k)  # each rank saw its own half
