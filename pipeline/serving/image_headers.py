"""Pixel counts of encoded images from their headers, in TF ops.

`predict_images` (`pipeline.serving.signatures`) refuses an encoded image
larger than MAX_IMAGE_PIXELS before any pixel is decoded: PNG, JPEG, GIF
(every frame counted), BMP and WebP (still, lossless or animated) declare
their size in their first bytes, read here as strings and integers inside
the graph.
"""

import tensorflow as tf

# The most pixels predict_images decodes from one encoded image: 4096 x 4096
# (64 MiB as 4-channel uint8, 256 MiB as float32), all frames of an animated
# GIF or WebP counted; larger ones are refused from their headers before
# decoding.
MAX_IMAGE_PIXELS = 4096 * 4096


def _uint(data, offset, size, big_endian):
  """Unsigned integer of `size` bytes at `offset` of a string, int64."""
  raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, size),
                                 tf.uint8), tf.int64)
  powers = tf.range(size, dtype=tf.int64)
  if big_endian:
    powers = tf.reverse(powers, [0])
  return tf.reduce_sum(raw * (256 ** powers))


def _byte(data, pos):
  """The byte at `pos` of a string (0 past its end), int64."""
  padded = data + b'\0'
  last = tf.cast(tf.strings.length(padded), tf.int64) - 1
  raw = tf.io.decode_raw(
      tf.strings.substr(padded, tf.minimum(tf.cast(pos, tf.int64), last), 1),
      tf.uint8)
  return tf.cast(tf.reduce_sum(raw), tf.int64)


def _gif_frames(data):
  """How many frames a GIF holds, by walking its blocks (the decoder
  decodes every frame, each of the logical screen's size)."""
  n = tf.cast(tf.strings.length(data), tf.int64)
  flags = _byte(data, 10)
  table = tf.where(flags >= 128, 3 * 2 ** (flags % 8 + 1),
                   tf.constant(0, tf.int64))

  # mode 0: at a block's introducer; mode 1: in its data sub-blocks.
  def body(pos, frames, mode):
    b = _byte(data, pos)
    image = tf.logical_and(tf.equal(mode, 0), tf.equal(b, 0x2C))
    extension = tf.logical_and(tf.equal(mode, 0), tf.equal(b, 0x21))
    local = _byte(data, pos + 9)
    local_table = tf.where(local >= 128, 3 * 2 ** (local % 8 + 1),
                           tf.constant(0, tf.int64))
    pos_next = tf.where(
        image, pos + 11 + local_table,
        tf.where(extension, pos + 2,
                 tf.where(tf.equal(mode, 1), pos + b + 1, n)))
    mode_next = tf.where(tf.logical_or(image, extension),
                         tf.constant(1, tf.int64),
                         tf.where(tf.logical_and(tf.equal(mode, 1),
                                                 tf.equal(b, 0)),
                                  tf.constant(0, tf.int64), mode))
    return pos_next, frames + tf.cast(image, tf.int64), mode_next

  _, frames, _ = tf.while_loop(
      lambda pos, frames, mode: pos < n, body,
      (13 + table, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
  return tf.maximum(frames, 1)


def _webp_pixels(padded, data):
  """Pixels of every frame a WebP declares: the canvas times the
  animation frames (ANMF chunks), from its RIFF chunks."""
  chunk = tf.strings.substr(padded, 12, 4)
  lossy = (_uint(padded, 26, 2, False) % 16384) * (
      _uint(padded, 28, 2, False) % 16384)
  bits = _uint(padded, 21, 4, False)
  lossless = (bits % 16384 + 1) * (bits // 16384 % 16384 + 1)
  canvas = (_uint(padded, 24, 3, False) + 1) * (_uint(padded, 27, 3, False) + 1)
  n = tf.cast(tf.strings.length(data), tf.int64)

  def body(pos, frames):
    size = _uint(padded, pos + 4, 4, False)
    anmf = tf.equal(tf.strings.substr(data + b'\0' * 8, pos, 4), b'ANMF')
    return pos + 8 + size + size % 2, frames + tf.cast(anmf, tf.int64)

  _, frames = tf.while_loop(lambda pos, frames: pos + 8 <= n, body,
                            (tf.constant(12, tf.int64),
                             tf.constant(0, tf.int64)))
  extended = canvas * tf.maximum(frames, 1)
  return tf.case([(tf.equal(chunk, b'VP8 '), lambda: lossy),
                  (tf.equal(chunk, b'VP8L'), lambda: lossless),
                  (tf.equal(chunk, b'VP8X'), lambda: extended)],
                 default=lambda: tf.constant(0, tf.int64))


def animated_webp(data):
  """Whether `data` is a WebP with the animation flag (an animated WebP
  must carry it, in its VP8X chunk): TensorFlow 2.21's decoder corrupts
  memory on those inside a graph (the process aborts), so they are refused
  before decoding."""
  padded = data + b'\0' * 32
  return tf.reduce_all(tf.stack([
      tf.equal(tf.strings.substr(padded, 0, 4), b'RIFF'),
      tf.equal(tf.strings.substr(padded, 8, 4), b'WEBP'),
      tf.equal(tf.strings.substr(padded, 12, 4), b'VP8X'),
      tf.equal(_byte(data, 20) // 2 % 2, 1)]))


def encoded_pixels(data):
  """Pixels an encoded PNG, JPEG, GIF, BMP or WebP decodes to, from its
  headers alone: height x width, times the frames for an animated GIF or
  WebP (their decoders decode every frame). 0 for other bytes (decoding
  then refuses them)."""
  padded = data + b'\0' * 32  # Header reads never run past the end.
  magic = tf.strings.substr(padded, 0, 4)

  def jpeg():
    return tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2],
                                  tf.int64))

  def other():
    png = _uint(padded, 16, 4, True) * _uint(padded, 20, 4, True)
    gif = _uint(padded, 6, 2, False) * _uint(padded, 8, 2, False)
    # A BMP's height is negative for top-down rows.
    bmp_height = _uint(padded, 22, 4, False)
    bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height,
                          bmp_height)
    bmp = _uint(padded, 18, 4, False) * bmp_height
    webp = tf.logical_and(tf.equal(magic, b'RIFF'), tf.equal(
        tf.strings.substr(padded, 8, 4), b'WEBP'))
    return tf.case([(tf.equal(magic, b'\x89PNG'), lambda: png),
                    (tf.equal(tf.strings.substr(magic, 0, 3), b'GIF'),
                     lambda: gif * _gif_frames(data)),
                    (tf.equal(tf.strings.substr(magic, 0, 2), b'BM'),
                     lambda: bmp),
                    (webp, lambda: _webp_pixels(padded, data))],
                   default=lambda: tf.constant(0, tf.int64))

  return tf.cond(tf.equal(tf.strings.substr(magic, 0, 2), b'\xff\xd8'), jpeg,
                 other)

