//! The kiOS image: file spec, inventory, initramfs builder and drift verification.
