import pytest
import torch
from torch import nn

from histo_core.model import MODELS, block_channels, create_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_gives_one_logit_per_image(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 96, 96))
    assert out.shape == (4,)
    assert torch.isfinite(out).all()


def test_default_model_is_the_original_five_block_cnn():
    model = create_model("simple_cnn", dropout=0.3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(block_channels()) == [32, 64, 128, 256, 512]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert model.head[-1].out_features == 1


def test_a_narrower_seed_cnn_halves_its_channels_and_checkpoints_say_so_only_when_not_the_default():
    from histo_core.checkpoint import model_record
    from histo_core.config import TrainConfig
    from histo_core.train import build_model

    narrow = TrainConfig(model="simple_cnn_ibn", width=8)
    model = build_model(narrow)
    convs = [sum(c.out_channels for c in block.modules() if isinstance(c, nn.Conv2d)) for block in model.features]
    assert convs == [8, 16, 32, 64, 128] and model.head[2].in_features == 128 * 3 * 3
    record = model_record(model, narrow)
    assert record["model_kwargs"] == {"dropout": 0.5, "width": 8}
    rebuilt = create_model(record["model_name"], **record["model_kwargs"])  # as inference rebuilds it
    rebuilt.load_state_dict(record["model"])
    assert model_record(build_model(TrainConfig()), TrainConfig())["model_kwargs"] == {"dropout": 0.5}
    # the default is the original network, parameter for parameter, from the same seed
    torch.manual_seed(3)
    default = create_model("simple_cnn")
    torch.manual_seed(3)
    explicit = create_model("simple_cnn", width=32)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    with pytest.raises(ValueError, match="width applies to the simple_cnn models only"):
        TrainConfig(model="resnet18", width=8)
    with pytest.raises(ValueError, match="width"):
        create_model("simple_cnn", width=1)


@pytest.mark.parametrize("setting, changed", [("width", 8), ("scale_jitter", 0.1)])
def test_a_model_folder_keeps_its_key_from_before_a_later_setting(kaggle_split, tmp_path, setting, changed):
    """An upgraded worker finds the models it trained: a later setting at its default is
    not in the key."""
    from histo_core import steps
    from histo_core.config import TrainConfig
    from histo_core.layout import Workdir
    from histo_core.storage import sha256_file

    workdir, cfg = Workdir(tmp_path), TrainConfig()
    before = {k: v for k, v in cfg.model_dump().items() if k not in steps.KEYED_ONLY_WHEN_SET}  # as they were
    expected = steps.content_key(sha256_file(kaggle_split.csv), before)
    assert steps.model_dir(workdir, kaggle_split, cfg).root.name == expected
    other = steps.model_dir(workdir, kaggle_split, cfg.model_copy(update={setting: changed}))
    assert other.root.name != expected


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of: resnet18, resnet34, resnet50, simple_cnn"):
        create_model("resnet9000")


def test_torchvision_resnets_train_from_scratch_with_our_dropout_head():
    model = create_model("resnet18", dropout=0.2)
    assert isinstance(model.net.fc[0], nn.Dropout) and model.net.fc[0].p == 0.2
    assert model.net.fc[1].out_features == 1
    fresh = create_model("resnet18", dropout=0.2)  # random init each time: no pretrained weights
    assert not torch.equal(model.net.conv1.weight, fresh.net.conv1.weight)


def test_the_ibn_variant_is_the_seed_cnn_with_per_image_normalisation_in_its_first_two_blocks():
    from histo_core.model import IBNBlock

    ibn, seed = create_model("simple_cnn_ibn"), create_model("simple_cnn")
    assert [isinstance(block, IBNBlock) for block in ibn.features] == [True, True, False, False, False]
    widths = [sum(c.out_channels for c in block.modules() if isinstance(c, nn.Conv2d)) for block in ibn.features]
    assert widths == list(block_channels())
    assert [tuple(v.shape) for v in ibn.head.state_dict().values()] == [
        tuple(v.shape) for v in seed.head.state_dict().values()]


def test_an_ibn_block_is_one_conv_whose_output_is_split_normalised_per_image_and_per_batch_and_joined():
    """The two-branch block computes what IBN-Net describes, from the initial weights one
    conv of the full width would have had with the same seed."""
    from torch.nn import functional as F

    from histo_core.model import IBNBlock

    torch.manual_seed(0)
    block = IBNBlock(3, 32).train()
    torch.manual_seed(0)
    assert torch.equal(nn.Conv2d(3, 32, 3, padding=1, bias=False).weight,
                       torch.cat([block.instance[0].weight, block.batch[0].weight]))
    with torch.no_grad():
        for p in block.parameters():  # away from the initial ones and zeros
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(6, 3, 20, 20)
    joined = F.conv2d(x, torch.cat([block.instance[0].weight, block.batch[0].weight]), padding=1)
    gn, bn = block.instance[1], block.batch[1]
    normalised = torch.cat([F.group_norm(joined[:, :16], 16, gn.weight, gn.bias, gn.eps),
                            F.batch_norm(joined[:, 16:], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)], dim=1)
    assert torch.allclose(block(x), F.max_pool2d(F.relu(normalised), 2), atol=1e-5)


def test_the_instance_half_forgets_an_images_own_contrast_and_never_looks_at_the_others():
    from histo_core.model import IBNBlock

    block = IBNBlock(3, 16).train()
    x = torch.rand(4, 3, 24, 24)
    rescaled = x.clone()
    rescaled[0] *= 3.0  # one image with three times the contrast (no bias: the conv scales with it)
    out, out_rescaled = block(x), block(rescaled)
    assert torch.allclose(out[:, :8], out_rescaled[:, :8], atol=1e-3)  # every image, instance half (up to eps)
    assert not torch.allclose(out[:, 8:], out_rescaled[:, 8:], atol=1e-2)  # the batch half sees image 0 change
    assert torch.allclose(out[1:2, :8], block(x[1:2])[:, :8], atol=1e-5)  # alone or in a batch: the same
    assert torch.allclose(block(x.to(memory_format=torch.channels_last)), out, atol=1e-5)
