//! Layer 5: the Linux node (being built).
