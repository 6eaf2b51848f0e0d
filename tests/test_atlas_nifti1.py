"""NIfTI-1 atlases read without nibabel (atlas._plain_nifti1): exactly what nibabel reads, or
nothing (nibabel then reads the file)."""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ahba_app import atlas as atlas_module
from ahba_app.atlas import AtlasTree, _plain_nifti1

DATA = Path(atlas_module.__file__).parent / "data"
BUNDLED = [DATA / "atlas-desikankilliany.nii.gz",
           *sorted((DATA / "native_dk").glob("*/atlas-desikankilliany.nii.gz"))]

#: header fields (offset, struct format) changed one at a time by the fuzzing test
FIELDS = {"dim0": (40, "h"), "dim1": (42, "h"), "dim4": (48, "h"), "datatype": (70, "h"),
          "bitpix": (72, "h"), "qfac": (76, "f"), "pixdim1": (80, "f"), "pixdim3": (88, "f"),
          "vox_offset": (108, "f"), "scl_slope": (112, "f"), "scl_inter": (116, "f"),
          "qform_code": (252, "h"), "sform_code": (254, "h"), "srow_x0": (280, "f"),
          "srow_z3": (324, "f"), "sizeof_hdr": (0, "i")}
VALUES = {"h": [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 64, 256, 1280, 2304, 27307],
          "f": [0.0, -0.0, 1.0, -1.0, 2.5, 348.0, 352.0, 360.0, 368.0, 4096.0, np.nan, np.inf,
                -3.0, 1e-30],
          "i": [348, 540, 0]}


def nibabel_reads(data: bytes):
    """What nibabel gives for the bytes of a single-file NIfTI-1 image: (shape, values,
    affine, anything it logged or warned), or the exception it raised."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("nibabel.global")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = nib.Nifti1Image.from_bytes(data)
            values = np.asarray(image.dataobj)
            return image.shape, values, image.affine, records + list(caught)
    except Exception as err:  # (whatever nibabel raises: ours must then decline)
        return err
    finally:
        logger.removeHandler(handler)


def assert_same(ours, theirs):
    shape, values, affine = ours
    assert not isinstance(theirs, Exception), theirs
    their_shape, their_values, their_affine, said = theirs
    assert not said, said  # (nibabel had something to say: ours must decline)
    assert shape == their_shape
    assert values.dtype == their_values.dtype
    assert values.shape == their_values.shape
    assert values.tobytes(order="A") == their_values.tobytes(order="A")
    assert np.array_equal(values, their_values)
    assert affine.dtype == their_affine.dtype
    assert affine.tobytes() == their_affine.tobytes()


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.parent.name)
def test_bundled_atlases_read_as_nibabel_reads_them(path):
    data = gzip.decompress(path.read_bytes())
    ours = _plain_nifti1(data)
    assert ours is not None  # (the warm API's atlas: read without nibabel)
    assert_same(ours, nibabel_reads(data))


def _image_bytes(dtype, shape, affine, *, endian="<", sform=2, qform=0, slope=None,
                 extension=False) -> bytes:
    """A NIfTI-1 file's bytes (values of ``dtype`` stored as such), its transform codes set
    after nibabel wrote them (nibabel fills an sform in when both are 0)."""
    import struct

    rng = np.random.default_rng(len(shape) + np.dtype(dtype).itemsize)
    values = rng.integers(0, 100, size=shape).astype(dtype)
    image = nib.Nifti1Image(values, affine, header=nib.Nifti1Header(endianness=endian))
    image.header.set_data_dtype(dtype)
    image.header.set_qform(affine)
    if slope is not None:
        image.header.set_slope_inter(*slope)
    if extension:
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"an atlas" * 5))
    data = bytearray(image.to_bytes())
    struct.pack_into(endian + "2h", data, 252, qform, sform)
    return bytes(data)


AFFINE = np.array([[-1.5, 0.0, 0.0, 90.25], [0.0, 1.5, 0.0, -126.0], [0.0, 0.0, 1.5, -72.5],
                   [0.0, 0.0, 0.0, 1.0]])
OBLIQUE = np.array([[0.98, 0.17, 0.0, 1.0], [-0.17, 0.98, 0.05, -2.0],
                    [0.0, -0.05, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
CASES = {
    "uint8": dict(dtype=np.uint8, shape=(9, 8, 7), affine=AFFINE),
    "int16 big-endian": dict(dtype=np.int16, shape=(9, 8, 7), affine=AFFINE, endian=">"),
    "int32 oblique": dict(dtype=np.int32, shape=(5, 6, 7), affine=OBLIQUE),
    "int64 with qform": dict(dtype=np.int64, shape=(5, 6, 7), affine=AFFINE, qform=1),
    "uint16 4-D of one volume": dict(dtype=np.uint16, shape=(5, 6, 7, 1), affine=AFFINE),
    "float32": dict(dtype=np.float32, shape=(5, 6, 7), affine=AFFINE),
    "float64 sform 4": dict(dtype=np.float64, shape=(4, 5, 6), affine=AFFINE, sform=4),
    "int8 2-D": dict(dtype=np.int8, shape=(7, 9), affine=AFFINE),
    "uint32 slope 1": dict(dtype=np.uint32, shape=(4, 5, 6), affine=AFFINE, slope=(1.0, 0.0)),
    "uint64 4-D": dict(dtype=np.uint64, shape=(3, 4, 5, 2), affine=AFFINE),
}


@pytest.mark.parametrize("case", CASES)
def test_plain_images_read_as_nibabel_reads_them(case):
    data = _image_bytes(**CASES[case])
    ours = _plain_nifti1(data)
    assert ours is not None
    assert_same(ours, nibabel_reads(data))


@pytest.mark.parametrize("case, options", [
    ("scaled", dict(slope=(0.5, 1.0))),
    ("offset only", dict(slope=(1.0, 2.0))),
    ("qform only", dict(sform=0, qform=1)),
    ("no transform", dict(sform=0, qform=0)),
    ("header extension", dict(extension=True)),
])
def test_other_images_left_to_nibabel(case, options):
    """Scaled values, an affine from the qform or pixel sizes, header extensions: nibabel
    reads them."""
    data = _image_bytes(np.int16, (5, 6, 7), OBLIQUE, **options)
    assert _plain_nifti1(data) is None
    assert not isinstance(nibabel_reads(data), Exception)


def test_damaged_headers_read_as_nibabel_or_not_at_all():
    """Every header field the reader looks at, set to values nibabel fixes, warns about or
    refuses: the reader declines those, and what it reads is what nibabel reads. Also cut
    short and padded files, and other magics."""
    import struct

    read = declined = 0
    cases = {name: CASES[name] for name in ("uint8", "int16 big-endian", "float32",
                                            "uint16 4-D of one volume")}
    cases["extension"] = dict(CASES["uint8"], extension=True)
    for case, options in cases.items():
        base = bytearray(_image_bytes(**options))
        endian = ">" if "big" in case else "<"
        variants = [bytes(base[:-1]), bytes(base) + b"\0" * 16, bytes(base[:351]),
                    bytes(base[:344]) + b"ni1\0" + bytes(base[348:]),
                    bytes(base[:344]) + b"n+2\0" + bytes(base[348:]),
                    bytes(base[:348]) + b"\1" + bytes(base[349:])]
        for name, (offset, kind) in FIELDS.items():
            for value in VALUES[kind]:
                data = bytearray(base)
                struct.pack_into(endian + kind, data, offset, value)
                variants.append(bytes(data))
        rng = np.random.default_rng(len(variants))
        for _ in range(150):  # (two or three fields at once)
            data = bytearray(base)
            for name in rng.choice(list(FIELDS), size=rng.integers(2, 4), replace=False):
                offset, kind = FIELDS[name]
                struct.pack_into(endian + kind, data, offset, rng.choice(VALUES[kind]))
            variants.append(bytes(data))
        for data in variants:
            ours = _plain_nifti1(data)
            if ours is None:
                declined += 1
                continue
            read += 1
            assert_same(ours, nibabel_reads(data))
    assert read > 50 and declined > 300  # (both ways taken)


def test_atlas_tree_same_from_path_and_from_nibabel_image():
    """The bundled DK atlas as a path (read without nibabel) and as nibabel's image give the
    same atlas: labels, voxels, coordinates, affine and centroids."""
    path = BUNDLED[0]
    ours, theirs = AtlasTree(path), AtlasTree(nib.load(path))
    assert ours.affine.tobytes() == theirs.affine.tobytes()
    assert ours._shape == theirs._shape
    assert ours.atlas.tobytes() == theirs.atlas.tobytes()
    assert ours.coords.tobytes() == theirs.coords.tobytes()
    assert ours.grid_labels().tobytes() == theirs.grid_labels().tobytes()
    assert ours.grid_labels().dtype == theirs.grid_labels().dtype
    assert list(ours.centroids) == list(theirs.centroids)
    assert all(ours.centroids[k].tobytes() == theirs.centroids[k].tobytes()
               for k in ours.centroids)


def test_volume_atlas_checked_without_importing_nibabel():
    """check_atlas on a plain NIfTI-1 file (the warm API's path) imports no nibabel; an
    image nibabel must read (scaled values) still loads, through nibabel."""
    code = (
        "import sys\n"
        "from ahba_app.atlas import check_atlas\n"
        f"tree = check_atlas({str(BUNDLED[0])!r})\n"
        "assert len(tree.labels) == 83, tree\n"
        "assert 'nibabel' not in sys.modules, 'nibabel imported'\n"
        "import ahba_app.api, ahba_app.pipeline\n"
        "assert 'nibabel' not in sys.modules, 'nibabel imported by the API modules'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scaled_atlas_still_read_through_nibabel(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(values, AFFINE)
    image.header.set_slope_inter(2.0, 0.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, path)
    assert _plain_nifti1(gzip.decompress(path.read_bytes())) is None
    data, affine = atlas_module._load_volume(path, "scaled")
    assert np.array_equal(data, np.asarray(nib.load(path).dataobj).astype(np.int64))
    assert affine.tobytes() == nib.load(path).affine.tobytes()
