"""The matting head: alpha from a VAE decoder's features, in the same pass as the decoded image.

- ``network.MattingHead``: the head (2.9 M parameters by default; taps at strides 8, 4, 2, 1 + RGB + key alpha), or
  with ``inputs="image"`` (``network.IMAGE_CONFIG``, 0.62 M) the image-only keyer: the same trunk on a small learned
  encoder of the image instead of decoder taps.
- ``refine``: GreenPost's learned mode (``key_image``, ``learned_green_post``, tiled ``refine_alpha``,
  ``resolve_keyer`` for the modes classical / learned / auto).
- ``taps``: forward hooks on the decoder (``tap_spec``, ``TapRecorder``) for ComfyUI's AutoencoderKL and TAESD-family
  decoders.
- ``taesd``: TAESD-family encoder/decoder built from published weights (TAEF2 included).
- ``decode.decode_with_head``: decode + taps + head, untiled or tiled.
- ``weights``: safetensors with metadata (``save_head``, ``load_head``, ``check_compatible``).
- Training lives in the one training toolkit: ``trainer.head.train_head`` (and ``trainer.head_eval``).
"""
