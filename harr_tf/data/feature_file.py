"""`--wta-features file:FEATURES.npz`: features a user computed elsewhere (CLIP, DINOv2, ...).

The file holds `ids` (N,) strings, the dataset's item ids (`folder:` paths relative to
the folder, "NAME/INDEX" for arrays and TFDS, `image/id` for TFRecords), and
`features` (N, d) floating point, one row per id, in any order. It must name exactly
the dataset's items: a missing or an extra id is an error, not a silent guess.
"""

from __future__ import annotations

import zipfile

import numpy as np

_SHOWN = 5


def read_feature_file(path: str, dataset_ids: tuple[str, ...], indices: np.ndarray) -> np.ndarray:
    """The `(len(indices), d)` float32 feature rows of the dataset items `indices`.

    Raises:
        ValueError: the file is not such an archive, or its ids are not the dataset's.
    """
    where = f"--wta-features file:{path}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("ids", "features") if key not in archive.files]
            if missing:
                raise ValueError(
                    f"{where} has no {' or '.join(missing)} array; it has {sorted(archive.files)}. "
                    "Expected 'ids' (N,) strings and 'features' (N, d) floats."
                )
            ids, features = archive["ids"], archive["features"]
    except (OSError, zipfile.BadZipFile, AttributeError) as err:
        raise ValueError(f"{where} is not a readable .npz file: {err}") from err
    if not np.issubdtype(features.dtype, np.floating) or features.ndim != 2:
        raise ValueError(
            f"{where}: 'features' must be floating point of shape (N, d). "
            f"Received: dtype={features.dtype}, shape={features.shape}"
        )
    if ids.dtype.kind not in "US" or ids.shape != (len(features),):
        raise ValueError(
            f"{where}: 'ids' must be {len(features)} strings, one per feature row. "
            f"Received: dtype={ids.dtype}, shape={ids.shape}"
        )
    ids = ids.astype(str)
    row = {item: position for position, item in enumerate(ids)}
    if len(row) != len(ids):
        raise ValueError(f"{where}: 'ids' repeat; each item needs exactly one row.")
    lacking = [item for item in dataset_ids if item not in row]
    extra = sorted(set(row) - set(dataset_ids))
    if lacking or extra:
        raise ValueError(
            f"{where}: its ids must be the dataset's {len(dataset_ids)} item ids; "
            f"{len(lacking)} missing (e.g. {', '.join(lacking[:_SHOWN]) or '-'}), "
            f"{len(extra)} extra (e.g. {', '.join(extra[:_SHOWN]) or '-'})."
        )
    rows = np.fromiter((row[dataset_ids[i]] for i in indices), np.int64, len(indices))
    chosen = features[rows].astype(np.float32)
    if not np.isfinite(chosen).all():
        raise ValueError(f"{where}: 'features' holds NaN or infinite values.")
    return chosen
