//! Layer 5: the controller daemon (being built).
