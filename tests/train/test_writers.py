"""Metric writers: JSON lines, and TensorBoard event files checked record by record (CRC, proto fields)."""

import glob
import json
import math
import struct

import pytest

from jaxdet.train.writers import MetricWriter, crc32c, masked_crc32c


def test_crc32c_known_answers():
  assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
  assert crc32c(b"") == 0
  assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def read_varint(data, i):
  shift = value = 0
  while True:
    b = data[i]
    value |= (b & 0x7F) << shift
    i += 1
    shift += 7
    if not b & 0x80:
      return value, i


def parse_fields(data):
  """Returns [(field number, wire type, value)] of one protobuf message (varint, 64-bit, bytes, 32-bit)."""
  out, i = [], 0
  while i < len(data):
    key, i = read_varint(data, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = read_varint(data, i)
    elif wire == 1:
      value, i = data[i:i + 8], i + 8
    elif wire == 2:
      n, i = read_varint(data, i)
      value, i = data[i:i + n], i + n
    elif wire == 5:
      value, i = data[i:i + 4], i + 4
    else:
      raise AssertionError(f"unexpected wire type {wire}")
    out.append((number, wire, value))
  return out


def read_records(path):
  data = open(path, "rb").read()
  records, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    (n,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc32c(header)
    payload = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked_crc32c(payload)
    records.append(payload)
    i += 16 + n
  assert i == len(data)
  return records


def scalars(event):
  fields = parse_fields(event)
  step = next((v for f, _, v in fields if f == 2), 0)
  values = {}
  for f, _, summary in fields:
    if f == 5:
      for _, _, value in parse_fields(summary):
        parts = {n: v for n, _, v in parse_fields(value)}
        values[parts[1].decode()] = struct.unpack("<f", parts[2])[0]
  return step, values


def test_jsonl_and_event_file_hold_the_same_scalars(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write(10, {"loss": 1.5, "lr": 0.01}, prefix="train/")
  writer.write(20, {"AP": 0.625, "bad": math.nan}, prefix="val/")
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [10, 20]
  assert lines[0]["train/loss"] == 1.5 and lines[1]["val/AP"] == 0.625 and lines[1]["val/bad"] is None
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  records = read_records(events)
  assert any(f == 3 and v == b"brain.Event:2" for f, _, v in parse_fields(records[0]))
  assert scalars(records[1]) == (10, {"train/loss": 1.5, "train/lr": pytest.approx(0.01)})
  assert scalars(records[2]) == (20, {"val/AP": 0.625})  # non-finite values are left out


def test_tensorboard_reads_the_event_file(tmp_path):
  loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
  writer = MetricWriter(tmp_path)
  writer.write(3, {"loss": 2.0})
  writer.close()
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  read = list(loader.EventFileLoader(events).Load())
  assert read[1].step == 3 and read[1].summary.value[0].tag == "loss"


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(tmp_path / "x", enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "x").exists()


def images(event):
  """Returns the step and {tag: (height, width, colorspace, png bytes)} of the image summaries in one event."""
  fields = parse_fields(event)
  step = next((v for f, _, v in fields if f == 2), 0)
  out = {}
  for f, _, summary in fields:
    if f == 5:
      for _, _, value in parse_fields(summary):
        parts = {n: v for n, _, v in parse_fields(value)}
        if 4 in parts:
          image = {n: v for n, _, v in parse_fields(parts[4])}
          out[parts[1].decode()] = (image[1], image[2], image[3], image[4])
  return step, out


def png_bytes(height, width):
  import io

  import numpy as np
  from PIL import Image
  pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return pixels, buffer.getvalue()


def test_image_summaries_hold_the_png_and_its_size(tmp_path):
  import io

  import numpy as np
  from PIL import Image
  pixels, png = png_bytes(300, 1000)  # sizes above 127 need multi-byte varints
  writer = MetricWriter(tmp_path)
  writer.write(5, {"AP": 0.5}, prefix="val/")
  writer.write_image(5, "val/detections", png)
  writer.close()
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  records = read_records(events)
  assert len(records) == 3 and scalars(records[1]) == (5, {"val/AP": 0.5})
  step, got = images(records[2])
  assert step == 5 and set(got) == {"val/detections"}
  height, width, colorspace, data = got["val/detections"]
  assert (height, width, colorspace) == (300, 1000, 3) and data == png
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_image_summaries_take_png_bytes_only(tmp_path):
  writer = MetricWriter(tmp_path)
  with pytest.raises(ValueError, match="PNG"):
    writer.write_image(1, "x", b"\xff\xd8\xff\xe0 a jpeg")
  writer.close()


def test_tensorboard_reads_the_image_summary(tmp_path):
  loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
  _, png = png_bytes(20, 30)
  writer = MetricWriter(tmp_path)
  writer.write_image(7, "val/detections", png)
  writer.close()
  from tensorboard.compat.proto import event_pb2
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  raw = event_pb2.Event.FromString(list(loader.RawEventFileLoader(events).Load())[1])
  image = raw.summary.value[0].image
  assert raw.step == 7 and (image.height, image.width, image.colorspace) == (20, 30, 3)
  assert image.encoded_image_string == png
  # What TensorBoard's image dashboard reads: the loader migrates legacy images to the "images" plugin's tensors.
  value = list(loader.EventFileLoader(events).Load())[1].summary.value[0]
  assert value.tag == "val/detections" and value.metadata.plugin_data.plugin_name == "images"
  assert list(value.tensor.string_val) == [b"30", b"20", png]
