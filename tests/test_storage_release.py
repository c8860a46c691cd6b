"""`quartet.storage_release`: storages freed and allocated again in place; spilled bytes come
back exactly; memory-mapped weights are given resizable memory first."""

from __future__ import annotations

import pytest
import torch

from quartet.storage_release import SpilledStorages, StorageSet


def test_tied_tensors_and_views_count_their_storage_once_and_see_the_new_memory():
    base = torch.arange(12, dtype=torch.float32)
    tied = torch.nn.Parameter(base.view(3, 4), requires_grad=False)
    view = base[4:8]
    kv = torch.ones(2, 8)
    s = StorageSet([tied, view, kv, torch.empty(0)])
    assert len(s) == 2 and s.nbytes == 12 * 4 + 16 * 4
    assert s.release() == s.nbytes
    assert tied.untyped_storage().nbytes() == 0 and kv.untyped_storage().nbytes() == 0
    assert s.release() == 0  # already released
    s.reallocate()
    s.zero_()
    assert tied.untyped_storage().nbytes() == 48
    base.fill_(7.0)  # writes through the one storage: every holder sees it
    assert bool((tied == 7).all()) and bool((view == 7).all()) and float(kv.sum()) == 0.0


def test_spilled_bytes_come_back_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    weights = [torch.randn(33, 17), torch.randn(5).to(torch.bfloat16), torch.randn(4096 + 3)]
    before = [w.clone() for w in weights]
    spill = SpilledStorages(weights, tmp_path, "reference weights")
    freed = spill.release()
    assert freed == sum(w.untyped_storage().nbytes() for w in before)
    assert all(w.untyped_storage().nbytes() == 0 for w in weights)
    for _ in range(2):  # restore, release again (no second spill), restore
        spill.restore()
        for w, b in zip(weights, before, strict=True):
            assert torch.equal(w.view(torch.uint8), b.view(torch.uint8))
        assert spill.release() == freed
    spill.restore()
    assert list(tmp_path.iterdir()) == []  # the spill file is unlinked from the start
    spill.close()


def test_memory_mapped_weights_are_spilled_then_given_resizable_memory(tmp_path):
    path = tmp_path / "w.bin"
    torch.arange(64, dtype=torch.float32).numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=64, dtype=torch.float32)
    param = torch.nn.Parameter(mapped.view(8, 8), requires_grad=False)
    assert not param.untyped_storage().resizable()
    spill = SpilledStorages([param], tmp_path / "spill", "w")
    spill.release()
    spill.restore()
    assert param.untyped_storage().resizable()
    assert torch.equal(param.flatten(), torch.arange(64, dtype=torch.float32))


def test_a_spill_directory_in_ram_is_refused(monkeypatch, tmp_path):
    import quartet.storage_release as sr

    monkeypatch.setattr(sr, "filesystem_type", lambda path: "tmpfs")
    with pytest.raises(ValueError, match="tmpfs"):
        SpilledStorages([torch.ones(3)], tmp_path, "reference weights")
