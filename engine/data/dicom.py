"""DICOM files to float32 arrays, done in the standard's order: Modality LUT, VOI, then inversion.

`read_image` turns one file into pixels plus a metadata dict; `read_series` stacks a folder of
single-frame slices into a volume sorted along the slice normal. Every failure is one
`DicomReadError` naming the file and a `reason` (see `Reason`); pydicom is imported lazily.
"""

from __future__ import annotations

import mmap
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DicomReadError

DEFAULT_MAX_PIXELS = 2**28  # rows x columns x frames x samples; 2**28 float32 values = 1 GiB

# Named CT windows (center, width) in Hounsfield units, the values radiology texts quote.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
}

# What to install per compressed transfer syntax family (pydicom 3 plugin names).
_CODEC_ADVICE = {
    "jpeg": "pylibjpeg and pylibjpeg-libjpeg (or pillow for baseline/extended)",
    "jpegls": "pyjpegls (or pylibjpeg and pylibjpeg-libjpeg)",
    "j2k": "pylibjpeg and pylibjpeg-openjpeg (or pillow)",
    "htj2k": "pylibjpeg and pylibjpeg-openjpeg",
    "rle": "pylibjpeg-rle (pydicom also decodes RLE natively)",
}
_INSTALL_HINT = "pip install 'medgrad[dicom-codecs]'"


class Reason:
    """The closed set of `DicomReadError.reason` values (RELIABILITY.md D1)."""

    NOT_DICOM = "NOT_DICOM"
    TRUNCATED = "TRUNCATED"
    MISSING_PIXEL_DATA = "MISSING_PIXEL_DATA"
    UNSUPPORTED_TRANSFER_SYNTAX = "UNSUPPORTED_TRANSFER_SYNTAX"
    INVALID_ATTRIBUTE = "INVALID_ATTRIBUTE"
    TOO_LARGE = "TOO_LARGE"
    MALFORMED = "MALFORMED"
    DECODER_CRASHED = "DECODER_CRASHED"
    IO = "IO"


def _error(path, reason: str, detail: str) -> DicomReadError:
    """A DicomReadError whose message names the file and reason; .path and .reason are set too."""
    err = DicomReadError(f"{path}: {detail} [{reason}]")
    err.path, err.reason = str(path), reason
    return err


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise DicomReadError("reading DICOM needs pydicom: pip install pydicom") from exc
    return pydicom


# ----------------------------------------------------------------------------- reading the file


def _open_dataset(path: Path, *, max_file_bytes: int, stop_before_pixels: bool = False):
    """Parse `path` with pydicom -> dataset. Raises DicomReadError.

    The file is memory-mapped rather than opened as a stream: pydicom trusts element length
    fields and `file.read(length)` would allocate a hostile 4 GiB length up front, whereas
    `mmap.read(length)` returns only the bytes that exist. FIFOs and devices are never opened.
    """
    pydicom = _pydicom()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _error(path, Reason.IO, f"cannot stat ({type(exc).__name__}: {exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _error(path, Reason.IO, "not a regular file (directory, FIFO or device)")
    if st.st_size < 132:
        raise _error(path, Reason.NOT_DICOM, f"only {st.st_size} bytes, too short for DICOM")
    if st.st_size > max_file_bytes:
        raise _error(path, Reason.TOO_LARGE, f"{st.st_size} bytes, over {max_file_bytes}")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(m, stop_before_pixels=stop_before_pixels)
            for w in caught:  # hand them on to the caller's recorder
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            _check_not_truncated(path, ds, caught)
    except DicomReadError:
        raise
    except pydicom.errors.InvalidDicomError as exc:
        raise _error(path, Reason.NOT_DICOM, f"not a DICOM file ({exc})") from exc
    except RecursionError as exc:
        raise _error(path, Reason.MALFORMED, "sequences nested too deeply") from exc
    except MemoryError as exc:
        raise _error(path, Reason.TOO_LARGE, "a length field asks for too much memory") from exc
    except (EOFError, pydicom.errors.BytesLengthException) as exc:
        raise _error(path, Reason.TRUNCATED, f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise _error(path, Reason.IO, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom raises ValueError, TypeError, struct.error, ... on junk
        raise _error(path, Reason.MALFORMED, f"cannot parse ({type(exc).__name__}: {exc})") from exc
    return ds


def _check_not_truncated(path, ds, caught) -> None:
    """pydicom reads a cut file silently; a top-level element shorter than its declared length,
    or an undefined-length element with no delimiter, shows the cut."""
    for w in caught:
        if "End of file reached" in str(w.message):
            raise _error(path, Reason.TRUNCATED, f"ends early ({w.message})")
    for elem in ds._dict.values():  # RawDataElements still hold their declared length
        length, value = getattr(elem, "length", None), getattr(elem, "value", None)
        if length is None or value is None or length == 0xFFFFFFFF:
            continue
        if isinstance(value, bytes | bytearray) and len(value) < length:
            raise _error(
                path,
                Reason.TRUNCATED,
                f"element {elem.tag} declares {length} bytes but the file holds {len(value)}",
            )


def _int_attr(path, ds, keyword: str, default=None, lo: int = 1, hi: int = 2**31) -> int:
    """A required integer attribute, validated: the message names the keyword."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise _error(path, Reason.INVALID_ATTRIBUTE, f"missing {keyword}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise _error(
            path, Reason.INVALID_ATTRIBUTE, f"{keyword}={value!r} is not an integer"
        ) from exc
    if not lo <= number <= hi:
        raise _error(path, Reason.INVALID_ATTRIBUTE, f"{keyword}={number} outside [{lo}, {hi}]")
    return number


def _geometry(path, ds, max_pixels: int) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples) validated, with the size limit checked before decoding.

    The product is computed in Python integers, so no 32-bit wrap-around can hide a bomb.
    """
    rows = _int_attr(path, ds, "Rows", hi=2**16 - 1)
    cols = _int_attr(path, ds, "Columns", hi=2**16 - 1)
    frames = _int_attr(path, ds, "NumberOfFrames", default=1, hi=2**31)
    samples = _int_attr(path, ds, "SamplesPerPixel", default=1, hi=4)
    if samples not in (1, 3):
        raise _error(path, Reason.INVALID_ATTRIBUTE, f"SamplesPerPixel={samples}, expected 1 or 3")
    if "PixelData" in ds:
        bits = _int_attr(path, ds, "BitsAllocated", hi=64)
        if bits not in (1, 8, 16, 32, 64):
            raise _error(path, Reason.INVALID_ATTRIBUTE, f"BitsAllocated={bits} unsupported")
        stored = _int_attr(path, ds, "BitsStored", default=bits, hi=bits)
        _int_attr(path, ds, "PixelRepresentation", default=0, lo=0, hi=1)
        del stored
    if not str(ds.get("PhotometricInterpretation", "")).strip():
        raise _error(path, Reason.INVALID_ATTRIBUTE, "missing PhotometricInterpretation")
    count = rows * cols * frames * samples
    if count > max_pixels:
        raise _error(
            path,
            Reason.TOO_LARGE,
            f"{frames} x {rows} x {cols} x {samples} = {count} values, over the limit "
            f"max_pixels={max_pixels}",
        )
    return frames, rows, cols, samples


def _check_decoder(path, ds) -> None:
    """Fail before decoding when the transfer syntax needs a plugin that is not installed."""
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        return  # Float/DoubleFloat Pixel Data are always native
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise _error(
            path,
            Reason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"transfer syntax {tsyntax} ({tsyntax.name}) has no pixel decoder in pydicom",
        ) from exc
    if tsyntax == "1.2.840.10008.1.2.5":  # RLE Lossless
        _check_rle_size(path, ds)
    if not decoder.is_available:
        raise _error(
            path,
            Reason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{tsyntax.name} ({tsyntax}) needs a decoder that is not installed: install "
            f"{_CODEC_ADVICE[_codec_family(tsyntax)]}, e.g. {_INSTALL_HINT}",
        )


def _check_rle_size(path, ds) -> None:
    """RLE (PackBits) turns at most 2 bytes into 128, so the decoded size is bounded by 64 x the
    encoded size; a header claiming more would make the decoder allocate the whole claimed
    output before noticing the data are short (a decompression bomb). Refuse it up front."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    decoded = (
        int(ds.Rows)
        * int(ds.Columns)
        * frames
        * int(ds.get("SamplesPerPixel", 1) or 1)
        * -(-int(ds.BitsAllocated) // 8)
    )
    encoded = len(ds.PixelData)
    if decoded > 64 * encoded + 64 * frames:
        raise _error(
            path,
            Reason.TRUNCATED,
            f"RLE pixel data of {encoded} bytes cannot hold the {decoded} bytes that Rows, "
            "Columns, NumberOfFrames and BitsAllocated declare",
        )


def _codec_family(tsyntax) -> str:
    """Which _CODEC_ADVICE entry a compressed transfer syntax belongs to."""
    name = tsyntax.name.lower()
    if "high-throughput" in name:
        return "htj2k"
    if "2000" in name:
        return "j2k"
    if "jpeg-ls" in name:
        return "jpegls"
    return "rle" if "rle" in name else "jpeg"


def _decode(path, ds, frames: int, rows: int, cols: int, samples: int) -> np.ndarray:
    """Stored values as (frames, rows, cols[, 3]); colour already converted to RGB by pydicom."""
    try:
        arr = ds.pixel_array
    except MemoryError as exc:
        raise _error(path, Reason.TOO_LARGE, "decoding ran out of memory") from exc
    except (RuntimeError, NotImplementedError) as exc:
        # "all plugins are missing dependencies" / "Pillow does not support ..." mean no usable
        # decoder; anything else is a decoder failing on this stream.
        text = " ".join(str(exc).split())
        unsupported = any(k in text for k in ("missing", "not support", "NotImplemented"))
        reason = Reason.UNSUPPORTED_TRANSFER_SYNTAX if unsupported else Reason.DECODER_CRASHED
        tsyntax = ds.file_meta.TransferSyntaxUID
        raise _error(
            path,
            reason,
            f"cannot decode {tsyntax.name} ({type(exc).__name__}: {text}); other decoders: "
            f"{_CODEC_ADVICE[_codec_family(tsyntax)]}, e.g. {_INSTALL_HINT}",
        ) from exc
    except (EOFError, ValueError) as exc:
        text = str(exc)
        reason = (
            Reason.TRUNCATED
            if ("less than expected" in text or "EOF" in text)
            else (Reason.INVALID_ATTRIBUTE)
        )
        raise _error(path, reason, f"bad pixel data ({type(exc).__name__}: {text})") from exc
    except Exception as exc:  # a decoder plugin failing in its own way
        raise _error(path, Reason.DECODER_CRASHED, f"{type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        # Rust decoders (pylibjpeg-rle via pyo3) panic with PanicException, a BaseException, on
        # corrupt streams; only the interpreter's own control-flow exceptions pass through.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise _error(path, Reason.DECODER_CRASHED, f"{type(exc).__name__}: {exc}") from exc
    expected = (frames, rows, cols) + ((samples,) if samples == 3 else ())
    if arr.size != int(np.prod(expected)):
        raise _error(path, Reason.MALFORMED, f"decoded shape {arr.shape}, expected {expected}")
    return arr.reshape(expected)


# ----------------------------------------------------------------------------- grey-scale pipeline


def _frame_item(ds, frame: int, sequence: str):
    """Item 0 of `sequence` in the per-frame functional group of `frame`, else the shared group
    (enhanced multi-frame objects keep rescale and windows there), else None."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def _stored_range(ds) -> tuple[float, float]:
    """The representable stored-value range from BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality(path, ds, arr: np.ndarray) -> tuple[np.ndarray, list, list[tuple[float, float]]]:
    """Stored values -> physical units per frame, in float64.

    Returns (values, rescale record per frame, representable (lo, hi) per frame). The per-frame
    PixelValueTransformationSequence wins over the top-level Rescale*, which wins over the
    Modality LUT Sequence (pydicom's apply_modality_lut handles the last two, not the first).
    """
    from pydicom.pixels import apply_modality_lut

    out = np.empty(arr.shape, dtype=np.float64)
    records, ranges = [], []
    lo, hi = _stored_range(ds)
    for i in range(arr.shape[0]):
        item = _frame_item(ds, i, "PixelValueTransformationSequence")
        source = item if item is not None and "RescaleSlope" in item else None
        if source is None and "ModalityLUTSequence" not in ds:
            source = ds
        if source is not None:
            slope = float(source.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
            if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
                raise _error(
                    path,
                    Reason.INVALID_ATTRIBUTE,
                    f"RescaleSlope={slope}, RescaleIntercept={intercept}",
                )
            out[i] = arr[i] * slope + intercept
            records.append({"slope": slope, "intercept": intercept})
            ends = (lo * slope + intercept, hi * slope + intercept)
            ranges.append((min(ends), max(ends)))
        else:
            out[i] = apply_modality_lut(arr[i], ds)
            records.append({"lut": True})
            bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
            ranges.append((0.0, 2.0**bits - 1))
    return out, records, ranges


def _window_values(center: float, width: float, function: str, x: np.ndarray) -> np.ndarray:
    """VOI window to [0, 1] (PS3.3 C.11.2.1.2): LINEAR, LINEAR_EXACT or SIGMOID."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR: the standard's half-pixel offsets; width 1 is a threshold at center - 0.5
    if width <= 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    """WindowCenter/Width may be multi-valued: the first is the default view."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _file_window(path, ds, i: int, x: np.ndarray):
    """Apply the file's VOI to frame i: (values in [0, 1], description) or None if it has none."""
    from pydicom.pixels import apply_voi_lut

    item = _frame_item(ds, i, "FrameVOILUTSequence")
    source = item if item is not None and "WindowCenter" in item else ds
    if "WindowCenter" in source and "WindowWidth" in source:
        try:
            center, width = _first(source.WindowCenter), _first(source.WindowWidth)
        except (TypeError, ValueError) as exc:
            raise _error(path, Reason.INVALID_ATTRIBUTE, f"bad window ({exc})") from exc
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            raise _error(
                path, Reason.INVALID_ATTRIBUTE, f"WindowWidth={width} WindowCenter={center}"
            )
        function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window_values(center, width, function, x), (center, width, function)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        y = apply_voi_lut(x, ds, index=0, prefer_lut=True)
        return np.clip(y / (2.0**bits - 1), 0.0, 1.0), "voi_lut_sequence"
    return None


def _resolve_window(window) -> tuple[float, float] | str | None:
    """None | "auto"/"file" | preset name | (center, width) -> validated form."""
    if window is None or window in ("auto", "file"):
        return window
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window {window!r}; presets: {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"window must be None, 'auto', a preset or (center, width), got {window!r}"
        ) from exc
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return center, width


def _grey(path, ds, arr: np.ndarray, window, meta: dict) -> np.ndarray:
    """Modality LUT, then the window (if any), then MONOCHROME1 / INVERSE inversion.

    Inversion comes after the file's VOI, whose center refers to un-inverted values. Without a
    window, values are mirrored within the representable range (lo + hi - x), so higher is
    brighter for every photometric interpretation; an explicit (center, width) or preset is
    applied to those mirrored values, i.e. in the units `window=None` returns.
    """
    values, records, ranges = _modality(path, ds, arr)
    meta["rescale"] = records[0] if len(set(map(str, records))) == 1 else records
    invert = (
        str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
        or str(ds.get("PresentationLUTShape", "")).strip() == "INVERSE"
    )
    meta["inverted"] = invert
    used = []
    for i in range(values.shape[0]):
        x = values[i]
        if window in ("auto", "file"):
            got = _file_window(path, ds, i, x)
            if got is None:  # no window in the file: the frame's own range
                lo, hi = float(x.min()), float(x.max())
                y, desc = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x), "min-max"
            else:
                y, desc = got
            values[i] = 1.0 - y if invert else y
        else:
            if invert:
                lo, hi = ranges[i]
                x = (lo + hi) - x
            if window is None:
                values[i], desc = x, None
            else:
                values[i], desc = _window_values(window[0], window[1], "LINEAR_EXACT", x), window
        used.append(desc)
    meta["window"] = used[0] if len(set(map(str, used))) == 1 else used
    return values


# ----------------------------------------------------------------------------- public API


def read_header(path, *, max_file_bytes: int) -> dict[str, Any]:
    """read_image's meta fields plus "frames" (NumberOfFrames, 1 when absent or unreadable) for a
    DICOM file parsed with stop_before_pixels: its pixel data is never read or decoded. Raises
    DicomReadError; pydicom's warnings never escape (as in read_image)."""
    import warnings

    path = Path(path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ds = _open_dataset(path, max_file_bytes=max_file_bytes, stop_before_pixels=True)
    try:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        frames = 1  # read_image rejects such a file with the reason
    return {**_meta(path, ds), "frames": frames}


def _meta(path, ds) -> dict[str, Any]:
    """The header fields a user needs, as plain Python values (never pydicom objects)."""

    def get(keyword, cast=str):
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        try:
            return cast(value)
        except (TypeError, ValueError):
            return None

    def floats(value):
        return [float(v) for v in value]

    spacing = get("PixelSpacing", floats)
    if spacing is None:  # enhanced objects keep it in the shared Pixel Measures
        item = _frame_item(ds, 0, "PixelMeasuresSequence")
        if item is not None and "PixelSpacing" in item:
            spacing = floats(item.PixelSpacing)
    return {
        "path": str(path),
        "modality": get("Modality"),
        "sop_class_uid": get("SOPClassUID"),
        "patient_id": get("PatientID"),
        "study_instance_uid": get("StudyInstanceUID"),
        "series_instance_uid": get("SeriesInstanceUID"),
        "sop_instance_uid": get("SOPInstanceUID"),
        "instance_number": get("InstanceNumber", int),
        "photometric_interpretation": get("PhotometricInterpretation"),
        "pixel_spacing": spacing,
        "slice_thickness": get("SliceThickness", float),
        "image_position": get("ImagePositionPatient", floats),
        "image_orientation": get("ImageOrientationPatient", floats),
        "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        or None,
    }


def read_image(
    path: str | os.PathLike,
    *,
    window=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM file -> (pixels float32, meta dict).

    Grey-scale: (frames, H, W), (1, H, W) for a single frame. window=None gives physical units
    (Modality LUT applied, e.g. Hounsfield units for CT); "auto"/"file" applies the file's VOI
    (window center/width with its VOILUTFunction, or the VOI LUT Sequence; the frame's min-max
    when it has none) -> [0, 1]; a preset name (WINDOW_PRESETS) or (center, width) -> [0, 1].
    MONOCHROME1 is inverted after the VOI (see _grey). Colour: RGB (frames, H, W, 3), channels
    last, in stored units (0..255 for 8 bits) with window=None, divided by the maximum stored value
    otherwise; no LUT applies to colour. meta: see _meta, plus "window", "rescale", "inverted",
    "warnings". Anything wrong raises DicomReadError with .path and .reason; the size limit
    (max_pixels decoded values) is checked before any pixel is decoded.
    """
    path = Path(path)
    window = _resolve_window(window)
    if max_file_bytes is None:
        max_file_bytes = 8 * max_pixels + (64 << 20)  # 8 bytes a value (double float) + headers
    # pydicom warns on odd values; the warnings go to meta["warnings"] rather than the caller's
    # filters (a test run with warnings-as-errors would otherwise see a different code path).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _open_dataset(path, max_file_bytes=max_file_bytes)
        try:
            image, meta = _pixels(path, ds, window, max_pixels)
        except DicomReadError:
            raise
        except MemoryError as exc:
            raise _error(path, Reason.TOO_LARGE, "out of memory while converting") from exc
        except Exception as exc:  # a header value of the wrong type deep in a LUT, etc.
            raise _error(path, Reason.MALFORMED, f"{type(exc).__name__}: {exc}") from exc
    meta["warnings"] = [str(w.message) for w in caught]
    return image, meta


def _pixels(path, ds, window, max_pixels):
    if len(ds) == 0:  # a preamble and "DICM" with nothing after, or a file cut that early
        raise _error(path, Reason.NOT_DICOM, "no data elements after the file meta header")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        what = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise _error(path, Reason.MISSING_PIXEL_DATA, f"no pixel data: not an image{what}")
    if "PixelData" in ds and not getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None):
        raise _error(path, Reason.MALFORMED, "no Transfer Syntax UID in the file meta header")
    frames, rows, cols, samples = _geometry(path, ds, max_pixels)
    _check_decoder(path, ds)
    arr = _decode(path, ds, frames, rows, cols, samples)
    meta = _meta(path, ds)
    pi = meta["photometric_interpretation"] or ""
    if samples == 3 or pi == "PALETTE COLOR":
        if pi == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype.itemsize > 1 else 8
        out = arr.astype(np.float32)
        if window is not None:
            out /= np.float32(2**bits - 1)
        meta.update(
            window="rgb-range" if window is not None else None, rescale=None, inverted=False
        )
    else:
        out = _grey(path, ds, arr, window, meta).astype(np.float32)
    if not np.isfinite(out).all():
        raise _error(path, Reason.INVALID_ATTRIBUTE, "pixel values are not finite (NaN or inf)")
    return out, meta


def list_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Regular files under `folder`, sorted by path (symlinks to files followed, FIFOs skipped).

    Hidden files and `labels.csv`, DICOMDIR and README files are not candidates.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomReadError(f"{folder}: not a folder")
    skip = {"labels.csv", "DICOMDIR", "README", "README.txt"}
    pattern = "**/*" if recursive else "*"
    out = []
    for p in folder.glob(pattern):
        if p.name.startswith(".") or p.name in skip:
            continue
        try:
            if stat.S_ISREG(os.stat(p).st_mode):
                out.append(p)
        except OSError:
            continue  # broken symlink or a race: not a candidate
    return sorted(out)


def read_series(
    folder: str | os.PathLike,
    *,
    window=None,
    series_uid: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, tuple, list[dict]]:
    """Stack a folder of single-frame slices -> (volume float32 (slices, H, W), (dz, dy, dx), metas).

    Slices are sorted by their position along the slice normal (ImagePositionPatient projected on
    row x column of ImageOrientationPatient), never by file name or InstanceNumber. One series per
    call: several SeriesInstanceUIDs need `series_uid`. Different orientation, size or pixel
    spacing, two slices at one position, or uneven gaps (> 1% + 0.01 mm) raise DicomReadError.
    metas are in volume order. dz is the median gap between neighbouring slices in mm.
    """
    files = list_files(folder, recursive=False)
    if not files:
        raise DicomReadError(f"{folder}: no files")
    items = [read_image(p, window=window, max_pixels=max_pixels) for p in files]
    by_series: dict[str, list] = {}
    for img, meta in items:
        by_series.setdefault(meta["series_instance_uid"] or "", []).append((img, meta))
    if series_uid is not None:
        if series_uid not in by_series:
            raise DicomReadError(f"{folder}: no series {series_uid}; found {sorted(by_series)}")
        items = by_series[series_uid]
    elif len(by_series) > 1:
        raise DicomReadError(
            f"{folder}: {len(by_series)} series ({sorted(by_series)}); pass series_uid= to pick one"
        )
    return _stack(Path(folder), items)


def _stack(folder: Path, items: list) -> tuple[np.ndarray, tuple, list[dict]]:
    def bad(why: str) -> DicomReadError:
        err = DicomReadError(f"{folder}: inconsistent series: {why}")
        err.path, err.reason = str(folder), "INCONSISTENT_SERIES"
        return err

    first = items[0][1]
    for img, meta in items:
        name = Path(meta["path"]).name
        if img.shape[0] != 1 or img.ndim != 3:
            raise bad(f"{name} has shape {img.shape}; read_series stacks single-frame grey slices")
        if meta["image_position"] is None or meta["image_orientation"] is None:
            raise bad(f"{name} lacks ImagePositionPatient or ImageOrientationPatient")
        if len(meta["image_position"]) != 3 or len(meta["image_orientation"]) != 6:
            raise bad(f"{name} has a malformed position or orientation")
        if img.shape != items[0][0].shape:
            raise bad(
                f"{name} is {img.shape[1:]}, {Path(first['path']).name} is {items[0][0].shape[1:]}"
            )
        if not np.allclose(meta["image_orientation"], first["image_orientation"], atol=1e-4):
            raise bad(
                f"{name} has orientation {meta['image_orientation']}, "
                f"{Path(first['path']).name} has {first['image_orientation']}"
            )
        if meta["pixel_spacing"] != first["pixel_spacing"]:
            raise bad(
                f"{name} has pixel spacing {meta['pixel_spacing']}, "
                f"{Path(first['path']).name} has {first['pixel_spacing']}"
            )
    iop = np.asarray(first["image_orientation"], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise bad(f"ImageOrientationPatient {list(iop)} is not two orthonormal directions")
    depth = np.array([np.dot(normal, m["image_position"]) for _, m in items])
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    items = [items[i] for i in order]
    if len(items) > 1:
        gaps = np.diff(depth)
        if gaps.min() < 1e-3:
            i = int(gaps.argmin())
            raise bad(
                f"{Path(items[i][1]['path']).name} and {Path(items[i + 1][1]['path']).name} "
                f"are at the same position along the slice normal"
            )
        dz = float(np.median(gaps))
        worst = int(np.abs(gaps - dz).argmax())
        if abs(gaps[worst] - dz) > 0.01 * dz + 0.01:
            raise bad(
                f"uneven slice spacing: {gaps[worst]:.3f} mm between "
                f"{Path(items[worst][1]['path']).name} and "
                f"{Path(items[worst + 1][1]['path']).name}, median {dz:.3f} mm"
            )
    else:
        dz = float(first["slice_thickness"] or 1.0)
    dy, dx = first["pixel_spacing"] or (1.0, 1.0)
    volume = np.concatenate([img for img, _ in items], axis=0)
    return volume, (dz, float(dy), float(dx)), [m for _, m in items]
