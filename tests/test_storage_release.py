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


def test_zeroing_gives_whole_pages_back_and_writes_only_the_partial_ends():
    from quartet.storage_release import PAGE_BYTES, private_anonymous_ranges, zero_anonymous

    buf = torch.full((6 * PAGE_BYTES,), 0xAB, dtype=torch.uint8)
    start = buf.data_ptr()
    assert any(lo <= start and start + buf.numel() <= hi
               for lo, hi in private_anonymous_ranges())  # torch's CPU memory qualifies
    # a view that starts and ends inside pages: 2+ whole pages between partial ends
    off = (-start % PAGE_BYTES) + 37
    part = buf[off:off + 3 * PAGE_BYTES + 50]
    small = buf[5 * PAGE_BYTES + 8:5 * PAGE_BYTES + 200]  # less than a page: written
    zero_anonymous([part, small])
    assert int(part.count_nonzero()) == 0 and int(small.count_nonzero()) == 0
    # nothing outside the views changed: the madvised range stayed inside `part`
    rest = torch.cat([buf[:off], buf[off + part.numel():5 * PAGE_BYTES + 8],
                      buf[5 * PAGE_BYTES + 200:]])
    assert bool((rest == 0xAB).all())


def test_shared_memory_is_zeroed_by_writing_not_by_madvise(tmp_path):
    from quartet.storage_release import PAGE_BYTES, private_anonymous_ranges, zero_anonymous

    shared = torch.full((4 * PAGE_BYTES,), 7, dtype=torch.uint8).share_memory_()
    assert shared.untyped_storage().resizable()  # so resizability cannot be the test
    lo_hi = (shared.data_ptr(), shared.data_ptr() + shared.numel())
    assert not any(lo <= lo_hi[0] and lo_hi[1] <= hi for lo, hi in private_anonymous_ranges())
    zero_anonymous([shared])  # MADV_DONTNEED here would read the 7s back
    assert int(shared.count_nonzero()) == 0
    mapped_path = tmp_path / "m.bin"
    torch.full((4 * PAGE_BYTES,), 9, dtype=torch.uint8).numpy().tofile(mapped_path)
    mapped = torch.from_file(str(mapped_path), shared=False, size=4 * PAGE_BYTES,
                             dtype=torch.uint8)
    zero_anonymous([mapped])  # a private file mapping: MADV_DONTNEED reads the file back
    assert int(mapped.count_nonzero()) == 0
