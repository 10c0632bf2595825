"""Label chunking of model drafts (the segmentation output)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from operando.models.drafts import MAX_CHUNK_VOXELS, _label_chunks

sizes = st.integers(1, 3000)


@given(
    st.tuples(st.integers(1, 5), sizes, sizes, sizes), st.sampled_from([(2, 3), (1, 3), (1, 2), (1, 2, 3)])
)
def test_label_chunks_fit_and_span_the_patch_plane_when_it_fits(shape, axes):
    chunks = _label_chunks(shape, axes)
    assert chunks[0] == 1
    assert all(1 <= c <= n for c, n in zip(chunks[1:], shape[1:], strict=True))
    assert int(np.prod(chunks)) <= MAX_CHUNK_VOXELS
    plane = int(np.prod([shape[a] for a in axes]))
    if len(axes) == 2 and plane <= MAX_CHUNK_VOXELS:
        # whole across the patches: no patch is run by two tasks
        assert all(chunks[a] == shape[a] for a in axes)


def test_label_chunks_of_the_memory_benchmark_series():
    # 2D patches across x: 400 x 800 planes, 25 of them per 8 Mi-voxel chunk
    assert _label_chunks((4, 400, 800, 800), (1, 2)) == (1, 400, 800, 25)
    # 3D patches: cubes, as before
    assert _label_chunks((4, 400, 800, 800), (1, 2, 3)) == (1, 200, 200, 200)
