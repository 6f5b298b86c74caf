"""Reference-checkpoint import: the test builds the reference code's dual-BN layout itself."""

import pytest
import torch
from torch import nn

import robust_hub
from robust_hub import RobustHubError
from robust_hub.models import convert_reference_checkpoint


class MultiBN(nn.Module):
    """The reference layout: bn_list.0 = normal, bn_list.1 = pgd, chosen by a forward argument."""

    def __init__(self, n, dims=2):
        super().__init__()
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.bn_list = nn.ModuleList([bn(n), bn(n)])

    def forward(self, x, which):
        return self.bn_list[which](x)


class RefBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = MultiBN(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = MultiBN(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Module()
            self.downsample.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.downsample.bn = MultiBN(cout)

    def forward(self, x, which):
        out = torch.relu(self.bn1(self.conv1(x), which))
        out = self.bn2(self.conv2(out), which)
        short = x if self.downsample is None else self.downsample.bn(self.downsample.conv(x), which)
        return torch.relu(out + short)


class RefResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2), two_layer_head=False):
        super().__init__()
        self.two_layer_head = two_layer_head
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = MultiBN(widths[0])
        cin = widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks)):
            layer = nn.ModuleList()
            for b in range(n):
                layer.append(RefBlock(cin, w, 2 if (b == 0 and s > 0) else 1))
                cin = w
            setattr(self, f"layer{s + 1}", layer)
        ch = cin
        self.fc = nn.Module()
        self.fc.fc1, self.fc.bn1 = nn.Linear(ch, ch), MultiBN(ch, 1)
        self.fc.fc2, self.fc.bn2 = nn.Linear(ch, ch, bias=False), MultiBN(ch, 1)
        if not two_layer_head:  # the reference's --twoLayerProj drops fc3/bn3
            self.fc.fc3, self.fc.bn3 = nn.Linear(ch, ch, bias=False), MultiBN(ch, 1)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(self, x, which):
        x = torch.relu(self.bn1(self.conv1((x - self.mean) / self.std), which))
        for s in range(1, 5):
            for block in getattr(self, f"layer{s}"):
                x = block(x, which)
        return x.mean(dim=(2, 3))

    def project(self, h, which):
        f = self.fc
        h = torch.relu(f.bn1(f.fc1(h), which))
        h = f.bn2(f.fc2(h), which)
        return h if self.two_layer_head else f.bn3(f.fc3(torch.relu(h)), which)


class RefWideBlock(nn.Module):
    """The TRADES WideResNet block with the reference's dual BN."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = MultiBN(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = MultiBN(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x, which):
        activated = torch.relu(self.bn1(x, which))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated), which)))
        return out + (x if self.equal else self.convShortcut(activated))


class RefWRN(RefResNet):
    def __init__(self, depth=10, widen=2):
        nn.Module.__init__(self)
        self.two_layer_head = False
        n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        cin = 16
        for g, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            group = nn.Module()
            group.layer = nn.ModuleList([RefWideBlock(cin if i == 0 else w, w, stride if i == 0 else 1) for i in range(n)])
            setattr(self, f"block{g + 1}", group)
            cin = w
        self.bn1 = MultiBN(cin)
        self.fc = nn.Module()
        self.fc.fc1, self.fc.bn1 = nn.Linear(cin, cin), MultiBN(cin, 1)
        self.fc.fc2, self.fc.bn2 = nn.Linear(cin, cin, bias=False), MultiBN(cin, 1)
        self.fc.fc3, self.fc.bn3 = nn.Linear(cin, cin, bias=False), MultiBN(cin, 1)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(self, x, which):
        x = self.conv1((x - self.mean) / self.std)
        for g in range(1, 4):
            for block in getattr(self, f"block{g}").layer:
                x = block(x, which)
        return torch.relu(self.bn1(x, which)).mean(dim=(2, 3))


def reference_model(cls=RefResNet, **kwargs):
    model = cls(**kwargs)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("wrapping", ["plain", "state_dict", "model", "state_dict_dual"])
def test_reference_checkpoint_gives_the_pgd_route_features(tmp_path, wrapping):
    ref = reference_model()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    payload = state if wrapping == "plain" else {wrapping: state, "epoch": torch.tensor(100)}
    torch.save(payload, tmp_path / "ref.pt")
    ours = convert_reference_checkpoint(tmp_path / "ref.pt")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref.features(x, 1), atol=1e-5)
        assert torch.allclose(ours(x, route="normal"), ref.features(x, 0), atol=1e-5)
        assert torch.allclose(ours(x, project=True), ref.project(ref.features(x, 1), 1), atol=1e-5)
        assert not torch.allclose(ref.features(x, 0), ref.features(x, 1), atol=1e-3)  # the routes really differ


def test_converted_checkpoint_round_trips_through_the_cli(tmp_path):
    from robust_hub.cli import main

    ref = reference_model(blocks=(1, 1, 1, 1))
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "ref.pt")
    assert main(["convert", str(tmp_path / "ref.pt"), str(tmp_path / "hf")]) == 0
    loaded = robust_hub.from_pretrained(str(tmp_path / "hf"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref.features(x, 1), atol=1e-5)


class Opaque:
    pass


def test_bad_reference_files_fail_clearly(tmp_path, capsys):
    from robust_hub.cli import main

    torch.save({"state_dict": reference_model().state_dict(), "args": Opaque()}, tmp_path / "pickle.pt")
    with pytest.raises(RobustHubError, match="Opaque object besides tensors"):
        convert_reference_checkpoint(tmp_path / "pickle.pt")
    (tmp_path / "notes.txt").write_text("0123 this is not a checkpoint\n")
    with pytest.raises(RobustHubError, match="not a PyTorch checkpoint"):
        convert_reference_checkpoint(tmp_path / "notes.txt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RobustHubError, match="corrupt"):
        convert_reference_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(RobustHubError, match="does not exist"):
        convert_reference_checkpoint(tmp_path / "missing.pt")
    state = reference_model().state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    assert main(["convert", str(tmp_path / "nan.pt"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["two_layer_head", "wrn"])
def test_two_layer_head_and_wide_resnet_checkpoints_convert(tmp_path, kind):
    ref = reference_model(two_layer_head=True) if kind == "two_layer_head" else reference_model(RefWRN)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ref.pt")
    ours = convert_reference_checkpoint(tmp_path / "ref.pt")
    assert ours.model_args["proj_layers"] == (2 if kind == "two_layer_head" else 3)
    if kind == "wrn":
        assert (ours.model_args["depth"], ours.model_args["widen"]) == (10, 2)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref.features(x, 1), atol=1e-5)
        assert torch.allclose(ours(x, route="normal"), ref.features(x, 0), atol=1e-5)
        assert torch.allclose(ours(x, project=True), ref.project(ref.features(x, 1), 1), atol=1e-5)


def test_a_layout_mismatch_names_the_missing_and_unexpected_keys(tmp_path):
    state = reference_model(blocks=(1, 1, 1, 1)).state_dict()
    state["layer1.0.extra.weight"] = torch.zeros(3)
    del state["layer2.0.conv2.weight"]
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(RobustHubError, match=r"missing \(would stay random\): layer2\.0\.conv2\.weight; "
                                             r"unexpected \(stored, unused\): layer1\.0\.extra\.weight"):
        convert_reference_checkpoint(tmp_path / "odd.pt")
