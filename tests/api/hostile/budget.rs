//! The operation budget and the per-operation limits: counting order, exemption, fragments.
