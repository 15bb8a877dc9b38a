//! The style networks on the CPU as one candle op over plain NHWC buffers (to come).
