//! Topics, presence and replays: what a client can make the bus hold or do.
