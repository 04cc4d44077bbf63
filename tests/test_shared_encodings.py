"""Shared image encodings (``data.group_sentences``): the grouped order, the deduplicating collate,
the shared forward against one encoding per sentence, and a short fit on several sentences per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import build_tiny_net, compose_config
from rsrefseg.config.build import build_datamodule, build_module
from rsrefseg.data.datamodule import RefSegDataModule, collate_shared_images
from rsrefseg.data.grouped_sampler import (
    GroupedDistributedSampler,
    GroupedRandomSampler,
    GroupedSequentialSampler,
    ImageGroups,
)
from rsrefseg.data.resumable_sampler import ResumableRandomSampler
from rsrefseg.data.shared_images import unique_images
from rsrefseg.evaluation.scoring import score_batch
from rsrefseg.training.wandb_panels import sentence_images

#: shared vs one encoding per sentence: the same arithmetic on differently batched rows
TOLERANCE = 1e-5


class Keyed:
    """A dataset of ``len(keys)`` samples whose ``image_keys()`` are ``keys``."""

    def __init__(self, keys):
        self.keys = list(keys)

    def __len__(self):
        return len(self.keys)

    def image_keys(self):
        return self.keys


#: 11 images with 1–4 sentences each (26 samples), the sentences of an image not adjacent
SENTENCES = [4, 3, 3, 2, 2, 2, 3, 1, 2, 1, 3]
KEYS = [f"img{image}" for round_ in range(4) for image, n in enumerate(SENTENCES) if round_ < n]


def runs(order, keys):
    """Each group's samples in ``order`` form one contiguous run."""
    seen, last = set(), None
    for index in order:
        key = keys[index]
        if key != last:
            assert key not in seen, f"image {key} is split in {order}"
            seen.add(key)
            last = key
    return True


# --------------------------------------------------------------------------------------------------
# The grouped order
# --------------------------------------------------------------------------------------------------


def test_grouped_sampler_gives_every_sample_once_with_an_images_sentences_together():
    data = Keyed(KEYS)
    assert ImageGroups.of(data).count == 11 and ImageGroups.of(data).largest == 4
    torch.manual_seed(3)
    sampler = GroupedRandomSampler(data)
    first, second = list(sampler), list(sampler)
    for order in (first, second):
        assert sorted(order) == list(range(len(KEYS))) and runs(order, KEYS)
    assert first != second  # a new order each epoch
    torch.manual_seed(3)
    assert list(GroupedRandomSampler(data)) == first  # deterministic per seed


def test_one_sentence_per_image_gives_the_ungrouped_order():
    """The synthetic benchmark has no image keys: grouping is the stock order exactly."""
    torch.manual_seed(5)
    plain = [list(ResumableRandomSampler(range(37))) for _ in range(2)]
    torch.manual_seed(5)
    grouped = GroupedRandomSampler(range(37))
    assert [list(grouped) for _ in range(2)] == plain


def test_grouped_sampler_continues_its_epoch_after_the_consumed_samples():
    data = Keyed(KEYS)
    torch.manual_seed(1)
    uninterrupted = GroupedRandomSampler(data)
    epoch = iter(uninterrupted)
    head = [next(epoch) for _ in range(8)]
    state = uninterrupted.state_dict(consumed=8)
    tail = list(epoch)
    resumed = GroupedRandomSampler(data)
    resumed.load_state_dict(state)
    assert list(resumed) == tail and sorted(head + tail) == list(range(len(KEYS)))
    with pytest.raises(ValueError, match="26 samples of 11 images and this run's has 26 of 26"):
        GroupedRandomSampler(range(26)).load_state_dict(state)


def test_two_ranks_get_disjoint_whole_images_equal_lengths_and_resume():
    data, left_out = Keyed(KEYS), []
    samplers = [GroupedDistributedSampler(data, num_replicas=2, rank=r, seed=42) for r in range(2)]
    for epoch in range(2):
        shares = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert len(shares[0]) == len(shares[1]) == len(samplers[0]) == (26 - 4) // 2
        images = [{KEYS[i] for i in share} for share in shares]
        assert not images[0] & images[1]  # no image on both ranks
        assert not set(shares[0]) & set(shares[1]) and all(runs(share, KEYS) for share in shares)
        # an epoch leaves out (ranks - 1) × largest group + the remainder at most, other ones each epoch
        left_out.append(set(range(len(KEYS))) - set(shares[0]) - set(shares[1]))
    assert all(len(left) == len(KEYS) - 2 * len(samplers[0]) for left in left_out)
    resumed = GroupedDistributedSampler(data, num_replicas=2, rank=1, seed=42)
    resumed.load_state_dict(samplers[1].state_dict(consumed=5))
    resumed.set_epoch(1)
    assert list(resumed) == shares[1][5:]
    with pytest.raises(ValueError, match="on 2 ranks and this run has 4"):
        GroupedDistributedSampler(data, num_replicas=4, rank=0, seed=42).load_state_dict(
            samplers[0].state_dict(consumed=5)
        )


def test_evaluation_order_is_every_sample_once_grouped_in_split_order():
    order = list(GroupedSequentialSampler(Keyed(KEYS)))
    assert sorted(order) == list(range(len(KEYS))) and runs(order, KEYS)
    assert order[:4] == [0, 11, 20, 25]  # img0's sentences, in split order, first


def test_a_resume_across_the_grouping_switch_is_refused(tmp_path):
    module = build_datamodule(compose_config("train", ["data.sizes={train:32,val:4,test:4}"]).data)
    module.load_state_dict({"train_sampler": ResumableRandomSampler(range(32)).state_dict(consumed=4)})
    module.group_sentences = True
    with pytest.raises(
        ValueError, match=r"data\.group_sentences=false and this run has data\.group_sentences=true"
    ):
        module.train_dataloader()


# --------------------------------------------------------------------------------------------------
# The collate: each distinct image once
# --------------------------------------------------------------------------------------------------


def test_only_equal_pixels_are_merged():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    flipped = a.flip(-1)  # the same image under another flip draw: another image
    unique, index = unique_images([a, b, a.clone(), flipped, b])
    assert len(unique) == 3 and index.tolist() == [0, 1, 0, 2, 1]
    assert torch.equal(unique[2], flipped)


def test_collated_batch_has_images_once_and_everything_else_per_sentence():
    images = [torch.rand(3, 8, 8) for _ in range(2)]
    samples = [
        {"image": images[i].clone(), "mask": torch.full((1, 8, 8), float(n)), "sentence": f"s{n}"}
        for n, i in enumerate([0, 0, 1, 0])
    ]
    batch = collate_shared_images(samples)
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image_index"].tolist() == [0, 0, 1, 0]
    assert batch["mask"].shape == (4, 1, 8, 8) and batch["sentence"] == ["s0", "s1", "s2", "s3"]
    assert torch.equal(sentence_images(batch)[2], images[1])  # what the W&B panels render


def test_scoring_counts_sentences_not_images():
    batch = {
        "image": torch.zeros(1, 3, 16, 16),
        "image_index": torch.zeros(3, dtype=torch.long),
        "mask": torch.ones(3, 1, 16, 16),
        "content_size": [(16, 8)] * 3,
    }
    preds, targets = score_batch(torch.ones(3, 1, 4, 4), batch, resolution="input")
    assert len(preds) == len(targets) == 3 and preds[0].shape == (16, 8)


# --------------------------------------------------------------------------------------------------
# The network: one encoding per image vs one per sentence
# --------------------------------------------------------------------------------------------------


def test_shared_and_per_sentence_encodings_agree():
    """Logits, every loss term and every gradient, on a batch of 6 sentences about 3 images."""
    net = build_tiny_net()
    loss = instantiate(compose_config("train").loss)
    size = compose_config("train").data.image_size
    torch.manual_seed(1)
    images = torch.rand(3, 3, size, size)
    index = torch.tensor([2, 0, 0, 1, 2, 0])
    sentences = ["the red roof", "a ship", "the left ship", "a road", "the pool", "the large ship"]
    targets = (torch.rand(6, 1, size, size) > 0.7).float()

    def run(shared: bool):
        net.zero_grad()
        out = net(images, sentences, index) if shared else net(images[index], sentences)
        terms = loss.for_output(out, targets)
        terms["loss"].backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        return out.logits.detach(), {k: v.detach() for k, v in terms.items()}, grads

    (shared_logits, shared_terms, shared_grads), (logits, terms, grads) = run(True), run(False)
    torch.testing.assert_close(shared_logits, logits, rtol=TOLERANCE, atol=TOLERANCE)
    assert shared_terms.keys() == terms.keys() and {"bce", "dice"} <= terms.keys()
    for name in terms:
        torch.testing.assert_close(shared_terms[name], terms[name], rtol=TOLERANCE, atol=TOLERANCE)
    assert shared_grads.keys() == grads.keys() and any(n.startswith("clip.") for n in grads)
    for name in grads:
        torch.testing.assert_close(shared_grads[name], grads[name], rtol=TOLERANCE, atol=TOLERANCE, msg=name)


# --------------------------------------------------------------------------------------------------
# A short fit on several sentences per image
# --------------------------------------------------------------------------------------------------

SENTENCES_PER_IMAGE = 4


def write_unified_jsonl(root: Path, images: dict[str, int], per_image: int, seed: int = 0) -> None:
    """``root/<split>.jsonl`` and ``root/images/*.png``: ``per_image`` sentences (own masks) per image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for split, count in images.items():
        lines = []
        for n in range(count):
            name = f"{split}{n}.png"
            pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
            for k in range(per_image):
                mask = np.zeros((48, 64), dtype=np.uint8)
                y, x = rng.integers(0, 32), rng.integers(0, 48)
                mask[y : y + 12, x : x + 14] = 1
                rle = mask_utils.encode(np.asfortranarray(mask))
                segmentation = {"size": [48, 64], "counts": rle["counts"].decode("ascii")}
                sentence = f"the {['red', 'small', 'left', 'top'][k]} object number {n}"
                lines.append(
                    {
                        "image_id": f"{split}{n}",
                        "sent": sentence,
                        "file_name": name,
                        "segmentation": segmentation,
                    }
                )
        (root / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_grouped_fit_encodes_fewer_images_than_sentences(tmp_path):
    write_unified_jsonl(tmp_path, {"train": 6, "val": 2, "test": 2}, SENTENCES_PER_IMAGE)
    overrides = [
        "data=jsonl",
        f"data.root={tmp_path}",
        "data.group_sentences=true",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
    ]
    cfg = compose_config("train", overrides)
    datamodule = build_datamodule(cfg.data)
    assert isinstance(datamodule, RefSegDataModule) and datamodule.group_sentences
    torch.manual_seed(0)
    module = build_module(cfg, datamodule)
    encoded, decoded = [], []
    encode, decode = module.net.encode_images, module.net.decode
    module.net.encode_images = lambda images: (encoded.append(images.shape[0]), encode(images))[1]
    module.net.decode = lambda enc, sentences, index=None: (
        decoded.append(len(sentences)),
        decode(enc, sentences, index),
    )[1]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    assert decoded == [8, 8, 8]  # the step's sentences as before
    assert sum(encoded) < sum(decoded) and max(encoded) <= 8 // SENTENCES_PER_IMAGE + 1
    encoded.clear()
    decoded.clear()
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert encoded == [2] and decoded == [8]  # the test split: 2 images, 8 sentences, one batch
    assert len(module.sample_rows["test"]) == 8
