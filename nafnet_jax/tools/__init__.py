"""Tools around a trained or planned model: restore images, convert weights, compile for TPU, benchmark."""
