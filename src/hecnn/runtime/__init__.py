"""Runtime: run a plan on ciphertext batches (server side) and pack/unpack them (client side)."""

from hecnn.runtime.client import decrypt_outputs, encrypt_images, pack
from hecnn.runtime.executor import RunReport, run
from hecnn.runtime.simulate import simulate

__all__ = ["RunReport", "decrypt_outputs", "encrypt_images", "pack", "run", "simulate"]
