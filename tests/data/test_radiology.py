"""DICOM/NIfTI loading and the volume folder readers, on small files written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from panderm.data.images import load_image
from panderm.data.manifest import build_manifest, read_manifest
from panderm.data.radiology import (
    WINDOWS,
    apply_window,
    format_window,
    load_dicom,
    load_nifti,
    nifti_shape,
    parse_window,
)
from panderm.data.readers import read_dicom_folder, read_nifti_folder
from panderm.errors import ConfigError, ImageLoadError, ManifestError

# ------------------------------------------------------------------------------------------- helpers


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient: str = "P1",
    modality: str = "CT",
    voi_lut: tuple[list[int], list[int]] | None = None,
) -> Path:
    """A minimal uncompressed DICOM image; `rescale` is (slope, intercept)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = modality
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:  # (LUTDescriptor, LUTData)
        item = Dataset()
        item.add_new("LUTDescriptor", "US", voi_lut[0])
        item.add_new("LUTData", "US", voi_lut[1])
        ds.VOILUTSequence = [item]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), path)
    return path


HU = np.array([[-1000, -600, 40], [400, -1024, 150]], dtype=np.float64)


def hand_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip(np.rint((values - (center - width / 2)) / width * 255), 0, 255)


# ----------------------------------------------------------------------------------------- windows


def test_apply_window_hand_numbers() -> None:
    out = apply_window(np.array([-1350.0, -600.0, 150.0, -2000.0, 1000.0]), *WINDOWS["lung"])
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[2] == 255 and out[3] == 0 and out[4] == 255
    assert out[1] in (127, 128)  # (-600 + 1350) / 1500 * 255 = 127.5


def test_apply_window_matches_monai_scale_intensity_range() -> None:
    from monai.transforms import ScaleIntensityRange

    values = np.random.default_rng(0).uniform(-1500, 2000, size=(64, 64)).astype(np.float32)
    center, width = WINDOWS["abdomen"]
    reference = ScaleIntensityRange(center - width / 2, center + width / 2, 0.0, 255.0, clip=True)(values)
    ours = apply_window(values, center, width).astype(np.float64)
    assert np.abs(ours - np.asarray(reference, dtype=np.float64)).max() <= 0.5 + 1e-6


def test_window_specs() -> None:
    assert parse_window(None) is None and parse_window("auto") is None and parse_window(float("nan")) is None
    assert parse_window("Lung") == WINDOWS["lung"]
    assert parse_window("40,400") == (40.0, 400.0) == parse_window((40, 400))
    assert (
        format_window("bone") == "bone"
        and format_window((40, 400)) == "40,400"
        and format_window(None) == "auto"
    )
    for bad in ("lungs", "40", "a,b", (40, 0), (40, -5)):
        with pytest.raises(ConfigError):
            parse_window(bad)


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_ct_rescale_to_hu_then_preset_window(tmp_path: Path) -> None:
    stored = (HU + 1024).astype(np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, rescale=(1.0, -1024.0))
    lung = load_dicom(path, window="lung")
    assert lung.shape == (2, 3) and lung.dtype == np.uint8
    np.testing.assert_array_equal(lung, hand_window(HU, -600, 1500))
    assert lung[0, 1] in (127, 128)  # HU -600 in the lung window
    assert lung[0, 0] == 60  # (-1000 + 1350) / 1500 * 255 = 59.5
    np.testing.assert_array_equal(load_dicom(path, window="40,400"), load_dicom(path, window="mediastinum"))
    np.testing.assert_array_equal(load_dicom(path, window=(40, 400)), hand_window(HU, 40, 400))


def test_dicom_rescale_slope_is_applied(tmp_path: Path) -> None:
    stored = ((HU + 1350) // 2).astype(np.uint16)
    hu = stored.astype(np.float64) * 2 - 1350
    path = write_dicom(tmp_path / "slope.dcm", stored, rescale=(2.0, -1350.0))
    np.testing.assert_array_equal(load_dicom(path, window="lung"), hand_window(hu, -600, 1500))


def test_dicom_auto_uses_file_window_then_percentiles(tmp_path: Path) -> None:
    stored = (HU + 1024).astype(np.uint16)
    with_window = write_dicom(tmp_path / "w.dcm", stored, rescale=(1.0, -1024.0), window=(40, 400))
    # DICOM PS3.3 C.11.2.1.2 linear window, computed by hand: c - 0.5, w - 1
    expected = np.clip(((HU - 39.5) / 399 + 0.5), 0, 1) * 255
    got = load_dicom(with_window).astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0
    assert np.array_equal(load_dicom(with_window, window="auto"), load_dicom(with_window))

    plain = write_dicom(tmp_path / "p.dcm", stored, rescale=(1.0, -1024.0))
    low, high = np.percentile(HU, [1, 99])
    np.testing.assert_array_equal(load_dicom(plain), apply_window(HU, (low + high) / 2, high - low))


def test_dicom_auto_uses_file_voi_lut(tmp_path: Path) -> None:
    pixels = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    lut = [50, 100, 150, 250]  # 4 entries from stored value 0, 8 bits each
    path = write_dicom(tmp_path / "lut.dcm", pixels, voi_lut=([4, 0, 8], lut), window=(1, 2))
    # the LUT wins over the window; its entries 50..250 span the output: (v - 50) / 200 * 255
    np.testing.assert_array_equal(load_dicom(path), [[0, 64], [128, 255]])
    np.testing.assert_array_equal(load_dicom(path, window="1.5,3"), hand_window(pixels, 1.5, 3))


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[0, 100, 200], [300, 400, 4095]], dtype=np.uint16)
    mono1 = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", modality="CR")
    mono2 = write_dicom(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2", modality="CR")
    np.testing.assert_array_equal(load_dicom(mono1, window="200,400"), 255 - hand_window(pixels, 200, 400))
    np.testing.assert_array_equal(load_dicom(mono1), 255 - load_dicom(mono2))


def test_dicom_multiframe_picks_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 5), 100 * (i + 1), dtype=np.uint16) for i in range(3)])
    frames[:, 0, 0] = 0  # give each frame a range so the percentile window is defined
    path = write_dicom(tmp_path / "mf.dcm", frames)
    window = "200,400"  # 0..400 -> 0..255
    assert load_dicom(path, window=window)[1, 1] == hand_window(np.array(200.0), 200, 400)  # middle frame
    assert load_dicom(path, window=window, frame=2)[1, 1] == hand_window(np.array(300.0), 200, 400)
    assert load_dicom(path, window=window, slice_index=0)[1, 1] == hand_window(np.array(100.0), 200, 400)
    assert load_dicom(path, window=window, slice_index=float("nan"), axis=float("nan"))[1, 1] == 128
    with pytest.raises(ImageLoadError, match=r"mf\.dcm.*frame 3 is out of range.*3 frame"):
        load_dicom(path, frame=3)


def test_dicom_errors_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"this is not a dicom file" * 20)
    with pytest.raises(ImageLoadError, match=r"corrupt\.dcm") as info:
        load_dicom(corrupt)
    assert info.value.path == str(corrupt)
    with pytest.raises(ImageLoadError, match=r"corrupt\.dcm"):
        load_image(corrupt)
    good = write_dicom(tmp_path / "good.dcm", (HU + 1024).astype(np.uint16), rescale=(1.0, -1024.0))
    with pytest.raises(ImageLoadError, match=r"good\.dcm.*window 'lungs'"):
        load_dicom(good, window="lungs")


def test_dicom_through_load_image_and_colour(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ct.dcm", (HU + 1024).astype(np.uint16), rescale=(1.0, -1024.0))
    rgb = load_image(path, window="lung")
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 0], load_dicom(path, window="lung"))
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (255, 255, 255)
    colour[1, 1] = (255, 0, 0)
    gray = load_dicom(write_dicom(tmp_path / "rgb.dcm", colour, photometric="RGB", modality="XC"))
    assert gray.shape == (2, 2) and gray[0, 0] == 255 and gray[0, 1] == 0
    assert gray[1, 1] == 76  # ITU-R 601 luma of pure red: 0.299 * 255


def test_dicom_bundled_pydicom_examples() -> None:
    """Real files shipped with pydicom: a CT (rescale to HU) and a 30-frame YBR colour cine."""
    import pydicom
    from PIL import Image
    from pydicom import examples

    ct = examples.get_path("ct")
    ds = pydicom.dcmread(ct)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(load_dicom(ct, window="abdomen"), hand_window(hu, 40, 400))
    cine = examples.get_path("ybr_color")
    frame = pydicom.dcmread(cine).pixel_array[7]  # pydicom converts YBR to RGB
    np.testing.assert_array_equal(load_dicom(cine, frame=7), np.asarray(Image.fromarray(frame).convert("L")))


# ------------------------------------------------------------------------------------------- NIfTI


@pytest.fixture
def marked_volume(tmp_path: Path) -> Path:
    """(x=10, y=12, z=7) RAS volume, identity affine, one voxel of 1000 at (2, 5, 3)."""
    volume = np.zeros((10, 12, 7), dtype=np.int16)
    volume[2, 5, 3] = 1000
    return write_nifti(tmp_path / "marked.nii.gz", volume)


def test_nifti_axial_slice_orientation(marked_volume: Path) -> None:
    # LPS display: x=2 of 0..9 (RAS) is column 9 - 2 = 7; y=5 of 0..11 is row 11 - 5 = 6 (anterior on top)
    picture = load_nifti(marked_volume, slice_index=3, window="500,1000")
    assert picture.shape == (12, 10) and picture.dtype == np.uint8
    assert np.argwhere(picture == 255).tolist() == [[6, 7]]
    assert np.array_equal(load_nifti(marked_volume, window="500,1000"), picture)  # middle of 7 slices is 3
    assert load_nifti(marked_volume, slice_index=2, window="500,1000").max() == 0


def test_nifti_coronal_and_sagittal_have_superior_on_top(marked_volume: Path) -> None:
    coronal = load_nifti(marked_volume, axis=1, slice_index=6, window="500,1000")  # LPS y = 11 - 5
    assert coronal.shape == (7, 10)
    assert np.argwhere(coronal == 255).tolist() == [[6 - 3, 7]]
    sagittal = load_nifti(marked_volume, axis=0, slice_index=7, window="500,1000")  # LPS x = 9 - 2
    assert sagittal.shape == (7, 12)
    assert np.argwhere(sagittal == 255).tolist() == [[6 - 3, 6]]


def test_nifti_orientation_follows_the_affine(tmp_path: Path, marked_volume: Path) -> None:
    # the same anatomy stored in LPS voxel order (x and y flipped, affine says so) must display the same
    volume = np.asarray(nib.load(marked_volume).dataobj)[::-1, ::-1, :].copy()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (9, 11, 0)
    flipped = write_nifti(tmp_path / "lps.nii", volume, affine)
    np.testing.assert_array_equal(
        load_nifti(flipped, window="500,1000"), load_nifti(marked_volume, window="500,1000")
    )
    assert nifti_shape(flipped) == (10, 12, 7)
    # a transposed storage order: (z, x, y) voxels with a permuting affine
    permuted = np.transpose(np.asarray(nib.load(marked_volume).dataobj), (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[0, 1] = affine[1, 2] = affine[2, 0] = affine[3, 3] = 1.0
    path = write_nifti(tmp_path / "zxy.nii.gz", permuted, affine)
    assert nifti_shape(path) == (10, 12, 7)
    np.testing.assert_array_equal(
        load_nifti(path, window="500,1000"), load_nifti(marked_volume, window="500,1000")
    )


def test_nifti_window_on_scaled_hu(tmp_path: Path) -> None:
    stored = np.zeros((3, 2, 3), dtype=np.int16)  # (x, y, z)
    stored[:, :, 1] = (HU.T + 1024).astype(np.int16)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)  # NIfTI's own rescale to HU
    path = tmp_path / "hu.nii.gz"
    nib.save(image, path)
    # LPS display flips x and y of this RAS volume and puts y on the rows: HU[::-1, ::-1]
    np.testing.assert_array_equal(
        load_nifti(path, slice_index=1, window="lung"), hand_window(HU[::-1, ::-1], -600, 1500)
    )


def test_nifti_auto_window_is_slice_percentiles(marked_volume: Path) -> None:
    volume = np.random.default_rng(1).normal(0, 100, size=(6, 5, 4)).astype(np.float32)
    path = write_nifti(marked_volume.parent / "noise.nii.gz", volume)
    plane = volume[::-1, ::-1, 2].T
    low, high = np.percentile(plane, [1, 99])
    np.testing.assert_array_equal(load_nifti(path), apply_window(plane, (low + high) / 2, high - low))


def test_nifti_errors_name_the_file(tmp_path: Path, marked_volume: Path) -> None:
    with pytest.raises(
        ImageLoadError, match=r"marked\.nii\.gz.*slice 7 is out of range along axis 2.*7 slices"
    ):
        load_nifti(marked_volume, slice_index=7)
    with pytest.raises(ImageLoadError, match=r"marked\.nii\.gz.*axis=3"):
        load_nifti(marked_volume, axis=3)
    flat = write_nifti(tmp_path / "flat.nii.gz", np.zeros((5, 6), dtype=np.float32))
    with pytest.raises(ImageLoadError, match=r"flat\.nii\.gz.*not a 3-D volume"):
        load_nifti(flat)
    series = write_nifti(tmp_path / "series.nii.gz", np.zeros((4, 4, 3, 2), dtype=np.float32))
    with pytest.raises(ImageLoadError, match=r"series\.nii\.gz.*not a 3-D volume: shape \(4, 4, 3, 2\)"):
        load_nifti(series)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip" * 10)
    with pytest.raises(ImageLoadError, match=r"corrupt\.nii\.gz"):
        load_nifti(corrupt)
    with pytest.raises(ImageLoadError, match=r"corrupt\.nii\.gz"):
        nifti_shape(corrupt)


def test_nifti_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((3, 3, 3), dtype=np.float32))
    assert load_nifti(path, window="0.5,1").max() == 0
    volume = np.zeros((3, 3, 4), dtype=np.float32)
    volume[1, 1, 2] = 1
    write_nifti(path, volume)
    assert load_nifti(path, window="0.5,1").max() == 255


# ---------------------------------------------------------------------------------- folder readers


@pytest.fixture
def dicom_tree(tmp_path: Path) -> Path:
    root = tmp_path / "dicom"
    hu = (HU + 1024).astype(np.uint16)
    write_dicom(root / "p1" / "ct_a.dcm", hu, rescale=(1.0, -1024.0), patient="P1", modality="CT")
    write_dicom(root / "p1" / "ct_b.dcm", hu, rescale=(1.0, -1024.0), patient="P1", modality="CT")
    write_dicom(root / "p2" / "mr.dcm", hu, patient="P2", modality="MR")
    frames = np.stack([hu + i for i in range(3)])
    write_dicom(root / "p3" / "cine.DCM", frames, patient="P3", modality="DX")
    (root / "notes.txt").write_text("not an image")
    return root


def test_read_dicom_folder(dicom_tree: Path) -> None:
    manifest = read_dicom_folder(dicom_tree, window="lung", split="val")
    table = manifest.table
    assert table["image"].tolist() == ["p1/ct_a.dcm", "p1/ct_b.dcm", "p2/mr.dcm", "p3/cine.DCM"]
    assert table["patient_id"].tolist() == ["P1", "P1", "P2", "P3"]
    assert table["modality"].tolist() == ["ct", "ct", "mri", "xray"]
    assert table["slice"].tolist() == [0, 0, 0, 1] and set(table["axis"]) == {0}
    assert set(table["window"]) == {"lung"} and set(table["split"]) == {"val"}
    for i, row in enumerate(table.itertuples()):
        picture = load_image(
            manifest.image_path(i), mode="L", slice_index=row.slice, axis=row.axis, window=row.window
        )
        assert picture.shape == (2, 3)
    assert len(read_dicom_folder(dicom_tree, frames="all")) == 6


def test_read_dicom_folder_round_trip_and_labels(dicom_tree: Path, tmp_path: Path) -> None:
    labels = pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "label": ["normal", "abnormal", "normal"]})
    manifest = read_dicom_folder(dicom_tree, labels=labels, id_column="patient_id", window=(40, 400))
    assert manifest.classes == ("abnormal", "normal")
    assert manifest.label_names().tolist() == ["normal", "normal", "abnormal", "normal"]
    assert set(manifest.table["window"]) == {"40,400"}
    saved = manifest.save(tmp_path / "dicom_manifest.csv")
    again = read_manifest(saved, dicom_tree, classes=manifest.classes)
    assert again.table["slice"].tolist() == manifest.table["slice"].tolist()
    assert again.table["window"].tolist() == manifest.table["window"].tolist()


def test_read_dicom_folder_reports_corrupt_files(dicom_tree: Path) -> None:
    (dicom_tree / "p2" / "broken.dcm").write_bytes(b"garbage" * 50)
    (dicom_tree / "p3" / "broken2.dicom").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"broken\.dcm") as info:
        read_dicom_folder(dicom_tree)
    assert len(info.value.problems) == 2 and "broken2.dicom" in str(info.value)
    with pytest.raises(ConfigError):
        read_dicom_folder(dicom_tree, window="lungs")


@pytest.fixture
def nifti_tree(tmp_path: Path) -> Path:
    root = tmp_path / "nifti"
    rng = np.random.default_rng(2)
    write_nifti(root / "case1.nii.gz", rng.normal(size=(6, 5, 4)).astype(np.float32))
    write_nifti(root / "sub" / "case2.nii", rng.normal(size=(6, 5, 9)).astype(np.float32))
    return root


def test_read_nifti_folder(nifti_tree: Path) -> None:
    middle = read_nifti_folder(nifti_tree)
    assert middle.table["image"].tolist() == ["case1.nii.gz", "sub/case2.nii"]
    assert middle.table["slice"].tolist() == [2, 4] and set(middle.table["axis"]) == {2}
    assert set(middle.table["modality"]) == {"ct"} and set(middle.table["window"]) == {"auto"}

    every = read_nifti_folder(nifti_tree, slices="all", modality="mri", window="brain")
    assert len(every) == 4 + 9
    assert every.table["slice"].tolist() == [*range(4), *range(9)]
    assert every.table["image_id"].tolist() == ["case1"] * 4 + ["sub/case2"] * 9
    assert set(every.table["modality"]) == {"mri"}
    assert every.table["slice"].nunique() == 9  # (image, slice) pairs are distinct, not duplicates

    strided = read_nifti_folder(nifti_tree, slices=3, axis=0)
    assert strided.table["slice"].tolist() == [0, 3, 0, 3] and set(strided.table["axis"]) == {0}

    for i, row in enumerate(every.table.itertuples()):
        picture = load_image(
            every.image_path(i), mode="L", slice_index=row.slice, axis=row.axis, window=row.window
        )
        assert picture.shape == (5, 6)
    # the table is a valid manifest as it stands
    build_manifest(every.table.drop(columns="row"), nifti_tree)


def test_read_nifti_folder_labels_and_errors(nifti_tree: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ["case1", "sub/case2"], "label": [0, 1], "patient_id": ["a", "b"]}).to_csv(
        labels, index=False
    )
    manifest = read_nifti_folder(nifti_tree, labels=labels, slices="all")
    assert manifest.table.groupby("image_id")["label"].first().tolist() == [0, 1]
    assert manifest.table["patient_id"].tolist() == ["a"] * 4 + ["b"] * 9
    with pytest.raises(ConfigError):
        read_nifti_folder(nifti_tree, slices="most")
    write_nifti(nifti_tree / "flat.nii.gz", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ManifestError, match=r"flat\.nii\.gz.*not a 3-D volume"):
        read_nifti_folder(nifti_tree)
