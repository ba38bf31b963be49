"""Metric writers: JSON lines for scripts and TensorBoard event files that need no TensorFlow.

The event file is the TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the
payload) of `Event` protocol buffers holding `Summary` values, encoded here by hand: the handful of fields
TensorBoard reads for scalars and images (`Event.wall_time = 1`, `step = 2`, `file_version = 3`, `summary = 5`;
`Summary.value = 1`; `Value.tag = 1`, `simple_value = 2`, `image = 4`; `Image.height = 1`, `width = 2`,
`colorspace = 3`, `encoded_image_string = 4`, the PNG file's bytes).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Mapping

_CRC32C_TABLE = []
for _byte in range(256):
  _crc = _byte
  for _ in range(8):
    _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
  _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
  """Returns the CRC-32C (Castagnoli) of `data`, as TFRecord uses."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # int64 fields encode negatives as 10-byte two's complement
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _png_size(png: bytes) -> tuple[int, int, int]:
  """(height, width, channels) from a PNG file's IHDR chunk."""
  if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
    raise ValueError("image summaries take the bytes of a PNG file")
  width, height = struct.unpack(">II", png[16:24])
  channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[png[25]]
  return height, width, channels


def encode_image_value(tag: str, png: bytes) -> bytes:
  """Returns a serialised `Summary.Value` holding `png` (the bytes of a PNG file) as an image summary."""
  height, width, channels = _png_size(png)
  image = b"\x08" + _varint(height) + b"\x10" + _varint(width) + b"\x18" + _varint(channels) + _field(4, png)
  return _field(1, tag.encode()) + _field(4, image)


def encode_event(*, wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 images: Mapping[str, bytes] | None = None, file_version: str | None = None) -> bytes:
  """Returns a serialised `tensorboard.Event` with the given scalar summaries and PNG image summaries."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
  if file_version is not None:
    out += _field(3, file_version.encode())
  values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
                   for tag, v in (scalars or {}).items())
  values += b"".join(_field(1, encode_image_value(tag, png)) for tag, png in (images or {}).items())
  if values:
    out += _field(5, values)
  return out


def tfrecord(payload: bytes) -> bytes:
  """Returns `payload` framed as one TFRecord."""
  length = struct.pack("<Q", len(payload))
  return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


class MetricWriter:
  """Writes scalar metrics to `DIR/metrics.jsonl` (one JSON object per call) and a TensorBoard event file.

  Non-finite values are written as JSON null (and skipped in TensorBoard) rather than making invalid JSON.
  Only process 0 writes in a multi-host run (`enabled=False` elsewhere).
  """

  def __init__(self, directory: str | os.PathLike[str], *, enabled: bool = True, jsonl_name: str = "metrics.jsonl"):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, jsonl_name), "a")
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self._events = open(os.path.join(directory, name), "ab")
    self._events.write(tfrecord(encode_event(wall_time=time.time(), file_version="brain.Event:2")))

  def write(self, step: int, metrics: Mapping[str, float], *, prefix: str = "") -> None:
    if not self.enabled:
      return
    values = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    record = {"step": int(step), "time": time.time(), **{k: v if math.isfinite(v) else None for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    self._events.write(tfrecord(encode_event(wall_time=record["time"], step=step, scalars=finite)))
    self._events.flush()

  def write_image(self, step: int, tag: str, png: bytes) -> None:
    """Adds the PNG file bytes `png` to the event file as image `tag` at `step` (TensorBoard's Images tab)."""
    if not self.enabled:
      return
    self._events.write(tfrecord(encode_event(wall_time=time.time(), step=step, images={tag: png})))
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()
