"""Files as hospitals produce them: every DICOM transfer syntax in clinical use, odd DICOM layouts,
NIfTI volumes with NaNs, and broken files. Every file decodes or is listed with a specific reason,
no batch tool raises, a batch always completes, and a batch that dies leaves no half-written folder.

Encodable syntaxes are encoded here with the pinned encoders (RLE, JPEG-LS, JPEG 2000, JPEG baseline
through Pillow, deflate, big-endian, implicit VR). The two no installed encoder writes (JPEG extended
12-bit, JPEG lossless) come from the DICOM files that ship inside the pydicom wheel, written by
dcmtk and GDCM: real files from outside this project, copied to a temporary folder at test time.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from environments.readers import (
    ImageReadError,
    decode_notes,
    read_image,
    read_image_keyed,
)

PYDICOM_FILES = {  # file in pydicom's test data -> what it is
    "JPGExtended.dcm": "JPEG extended (process 2 and 4), 12-bit, from GDCM",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless (process 14, SV1), RGB, from GDCM",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL, from dcmtk",
    "examples_ybr_color.dcm": "JPEG baseline YBR_FULL_422, 30 frames",
    "examples_palette.dcm": "PALETTE COLOR",
    "JPEG-lossy.dcm": "a 12-bit JPEG that no decoder accepts (misplaced marker)",
    "MR_truncated.dcm": "pixel data cut short",
    "waveform_ecg.dcm": "an ECG waveform: no image",
}


def _pydicom_file(name: str) -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def _dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", signed: bool = False, bits: int = 16,
             frames: int | None = None):
    """A minimal secondary-capture dataset holding ``pixels`` natively (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    colour = pixels.shape[-1] == 3 and photometric != "MONOCHROME2" and photometric != "MONOCHROME1"
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()
    return ds


def _ramp(signed: bool = False) -> np.ndarray:
    """64x64 grey ramp; 12-bit, signed around zero when asked."""
    ramp = np.tile(np.linspace(0, 4000, 64), (64, 1)).astype(np.int32)
    return (ramp - 2000).astype(np.int16) if signed else ramp.astype(np.uint16)


def _jpeg_baseline(path: Path) -> None:
    """An 8-bit grey JPEG from Pillow, encapsulated as JPEG Baseline (Process 1)."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    grey = (np.tile(np.linspace(0, 255, 64), (64, 1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=90)
    ds = _dataset(grey, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _write_files(folder: Path) -> dict[str, str]:
    """Every kind of file into ``folder``; returns file name -> what it is."""
    import nibabel as nib
    from pydicom.uid import (
        JPEG2000,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    folder.mkdir(parents=True)
    kinds: dict[str, str] = {}
    for uid, kwargs, name in ((RLELossless, {}, "rle"), (JPEGLSLossless, {}, "jpegls_lossless"),
                              (JPEGLSNearLossless, {"jls_error": 3}, "jpegls_near_lossless"),
                              (JPEG2000Lossless, {}, "j2k_lossless"), (JPEG2000, {"j2k_cr": [20]}, "j2k_lossy")):
        ds = _dataset(_ramp())
        ds.compress(uid, **kwargs)
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
        kinds[f"{name}.dcm"] = uid.name
    _jpeg_baseline(folder / "jpeg_baseline.dcm")
    kinds["jpeg_baseline.dcm"] = "JPEG baseline 8-bit (Pillow)"
    ds = _dataset(_ramp())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(folder / "deflated.dcm", enforce_file_format=True)
    kinds["deflated.dcm"] = "deflated explicit VR little endian"
    for uid, name in ((ExplicitVRBigEndian, "big_endian"), (ImplicitVRLittleEndian, "implicit_vr")):
        ds = _dataset(_ramp())
        ds.file_meta.TransferSyntaxUID = uid
        if not uid.is_little_endian:  # pixel data are stored in the file's byte order
            ds.PixelData = _ramp().astype(">u2").tobytes()
        ds.save_as(folder / f"{name}.dcm", implicit_vr=uid.is_implicit_VR, little_endian=uid.is_little_endian)
        kinds[f"{name}.dcm"] = uid.name
    ds = _dataset(_ramp())
    del ds.file_meta
    ds.save_as(folder / "no_file_meta.dcm", implicit_vr=False, little_endian=True, enforce_file_format=False)
    kinds["no_file_meta.dcm"] = "no file-meta header"
    frames = np.stack([np.full((1, 100, 3), v, np.uint8) for v in (20, 140, 250)])  # 3 frames of 1 x 100 RGB
    ds = _dataset(frames, photometric="RGB", bits=8, frames=3)
    ds.save_as(folder / "multiframe_rgb.dcm", enforce_file_format=True)
    kinds["multiframe_rgb.dcm"] = "multi-frame RGB (3 frames of 1 x 100)"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    from pydicom.pixels import convert_color_space

    ds = _dataset(convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL", bits=8)
    ds.save_as(folder / "ybr_full.dcm", enforce_file_format=True)
    kinds["ybr_full.dcm"] = "uncompressed YBR_FULL"
    mono1 = np.zeros((32, 32), np.uint16)
    mono1[:16] = 4000  # stored bright at the top: displayed dark
    ds = _dataset(mono1, photometric="MONOCHROME1", bits=12)
    ds.save_as(folder / "monochrome1.dcm", enforce_file_format=True)
    kinds["monochrome1.dcm"] = "MONOCHROME1 12-bit"
    ds = _dataset(_ramp(signed=True), signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000  # HU = 2 * stored - 1000
    ds.WindowCenter, ds.WindowWidth = [0, 400], [2000, 1000]  # the first window is used
    ds.save_as(folder / "signed_rescale_window.dcm", enforce_file_format=True)
    kinds["signed_rescale_window.dcm"] = "signed 16-bit, rescale slope/intercept, VOI window"
    for name in PYDICOM_FILES:
        shutil.copyfile(_pydicom_file(name), folder / name)
    kinds.update(PYDICOM_FILES)
    volume = np.random.default_rng(0).normal(100, 20, (24, 24, 9)).astype(np.float32)
    volume[3:8, 3:8, 4] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "nan_volume.nii.gz")
    kinds["nan_volume.nii.gz"] = "3-D NIfTI with NaN voxels"
    series = np.random.default_rng(1).normal(0, 1, (16, 16, 5, 3)).astype(np.float32)
    series[0, 0, 2, 0] = np.inf
    nib.save(nib.Nifti1Image(series, np.eye(4)), folder / "series_4d.nii")
    kinds["series_4d.nii"] = "4-D NIfTI with an infinite voxel"
    nib.save(nib.Nifti1Image(np.full((8, 8, 3), np.nan, np.float32), np.eye(4)), folder / "all_nan.nii.gz")
    kinds["all_nan.nii.gz"] = "NIfTI of NaNs only"
    (folder / "empty.dcm").write_bytes(b"")
    kinds["empty.dcm"] = "zero bytes"
    (folder / "notes.dcm").write_text("this is a text file, not DICOM")
    kinds["notes.dcm"] = "text named .dcm"
    return kinds


#: files that cannot give an image -> the words their reason must contain
UNREADABLE = {
    "JPEG-lossy.dcm": "misplaced marker",
    "MR_truncated.dcm": "less than expected",
    "waveform_ecg.dcm": "without pixel data (ECG)",
    "all_nan.nii.gz": "no finite values",
    "empty.dcm": "empty file",
    "notes.dcm": "not a DICOM file",
}


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("hospital") / "site_a" / "datasets" / "mixed"
    return folder, _write_files(folder)


def test_every_file_decodes_or_says_specifically_why_not(hospital) -> None:
    folder, kinds = hospital
    decoded = {}
    for name in kinds:
        path = folder / name
        if name in UNREADABLE:
            with pytest.raises(ImageReadError) as caught:
                read_image(path)
            assert name in str(caught.value) and UNREADABLE[name] in str(caught.value), (name, str(caught.value))
            continue
        pixels = read_image(path)
        assert pixels.dtype == np.uint8 and (pixels.ndim == 2 or pixels.shape[-1] == 3), (name, pixels.shape)
        decoded[name] = pixels
    assert len(decoded) == len(kinds) - len(UNREADABLE) == 21
    # lossless syntaxes give back the ramp exactly (as 8-bit); lossy ones close to it
    reference = decoded["deflated.dcm"].astype(int)
    for name in ("rle.dcm", "jpegls_lossless.dcm", "j2k_lossless.dcm", "big_endian.dcm", "implicit_vr.dcm",
                 "no_file_meta.dcm"):
        assert np.array_equal(decoded[name].astype(int), reference), name
    for name in ("jpegls_near_lossless.dcm", "j2k_lossy.dcm", "jpeg_baseline.dcm"):
        assert np.abs(decoded[name].astype(int) - reference).mean() < 6, name
    assert decoded["multiframe_rgb.dcm"].shape == (1, 100, 3) and (decoded["multiframe_rgb.dcm"] == 140).all()
    assert decoded["ybr_full.dcm"][..., 0].min() > 190 and decoded["ybr_full.dcm"][..., 1:].max() < 10  # red
    mono1 = decoded["monochrome1.dcm"]
    assert mono1[:16].max() == 0 and mono1[16:].min() == 255  # stored bright = displayed dark
    window = decoded["signed_rescale_window.dcm"].astype(int)
    # HU from -5000 to 2998 across the columns; window 0 +- 1000: clipped at both ends, linear inside
    assert window[:, 0].max() == 0 and window[:, -1].min() == 255 and 0 < window[0, 32] < 255
    assert decoded["examples_ybr_color.dcm"].shape == (240, 320, 3)  # the middle frame of 30
    assert decoded["examples_palette.dcm"].ndim == 3  # through the palette
    assert decoded["JPGExtended.dcm"].shape == (1024, 256) and decoded["JPGExtended.dcm"].std() > 0
    assert not np.isnan(decoded["nan_volume.nii.gz"]).any()


def test_decoding_says_what_it_had_to_do(hospital) -> None:
    folder, _ = hospital

    def notes(name: str) -> str:
        return " | ".join(decode_notes(read_image_keyed(folder / name)[1]))

    assert "no DICOM file-meta header" in notes("no_file_meta.dcm")
    assert "frame 2 (the middle one)" in notes("multiframe_rgb.dcm")
    assert "VOI window centre 0 width 2000" in notes("signed_rescale_window.dcm")
    assert "NaN or infinite voxels" in notes("nan_volume.nii.gz")
    assert "first one used" in notes("series_4d.nii") and "infinite" in notes("series_4d.nii")
    assert notes("rle.dcm") == ""


def _workspace(hospital, tmp_path: Path):
    from tools.sandbox import Workspace

    folder, kinds = hospital
    root = folder.parents[1]
    return Workspace(root, work_dir=tmp_path / "work"), kinds


def test_batch_tools_complete_and_list_each_failure(hospital, tmp_path: Path) -> None:
    from tools.images import convert_images, copy_dataset, summarise_images
    from tools.quality import detect_issues
    from tools.stats import report_statistics

    ws, kinds = _workspace(hospital, tmp_path)
    summary = summarise_images(ws, "datasets/mixed")
    assert summary["image_files"] == len(kinds) and summary["unreadable"]["count"] == len(UNREADABLE)
    out = convert_images(ws, "datasets/mixed", "work/converted", size=32, mode="L")
    assert out["converted"] + out["skipped_unreadable"]["count"] == len(kinds)
    assert out["skipped_unreadable"]["count"] == len(UNREADABLE)
    for name, words in UNREADABLE.items():
        assert any(line.startswith(f"{name}: ") and words in line for line in out["skipped_unreadable"]["files"]), name
    assert any("multiframe_rgb.dcm: 3 frames" in line for line in out["decoding_notes"]["files"])
    pngs = sorted((tmp_path / "work" / "converted").glob("*.png"))
    assert len(pngs) == out["converted"] and all(read_image(p).shape == (32, 32) for p in pngs)
    assert not [p for p in (tmp_path / "work").iterdir() if ".partial-" in p.name]
    flags = detect_issues(ws, "datasets/mixed", ["duplicates", "off_topic"])
    assert flags["images_checked"] == len(kinds) - len(UNREADABLE)
    assert flags["unreadable_images"]["count"] == len(UNREADABLE)
    # statistics of a class-folder copy: the failures listed for the hospital, counted for the server
    copy_dataset(ws, "datasets/mixed", "work/classes/scans")
    stats = report_statistics(ws, "work/classes")
    assert stats["statistics"]["unreadable"] == len(UNREADABLE)
    assert len(stats["unreadable_files"]) == len(UNREADABLE)
    assert "unreadable_files" not in (tmp_path / "work" / "stats.json").read_text()


def test_a_batch_that_dies_leaves_no_half_written_folder(hospital, tmp_path: Path, monkeypatch) -> None:
    from tools import images
    from tools.images import convert_images

    ws, _ = _workspace(hospital, tmp_path)
    first = convert_images(ws, "datasets/mixed", "work/converted", size=16, mode="L")
    before = sorted(p.name for p in (tmp_path / "work" / "converted").iterdir())
    calls = {"n": 0}
    real = images._png

    def dies_on_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as a killed batch: not an error any file could cause
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "_png", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        convert_images(ws, "datasets/mixed", "work/converted", size=24, mode="L", overwrite=True)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        convert_images(ws, "datasets/mixed", "work/other", size=24, mode="L")
    work = tmp_path / "work"
    assert sorted(p.name for p in (work / "converted").iterdir()) == before  # the old output, untouched
    assert read_image(work / "converted" / before[0]).shape == (16, 16)
    assert not (work / "other").exists() and not [p for p in work.iterdir() if ".partial-" in p.name]
    assert first["converted"] == len(before)
