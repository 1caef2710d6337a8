//! Plain data shared by the world, the stores and the services.

/// An account's id; a player's id in the world is its account id.
pub type AccountId = u64;

/// A point in the world. Always finite once it has passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Position {
    /// East-west.
    pub x: f32,
    /// Up-down.
    pub y: f32,
    /// North-south.
    pub z: f32,
}

impl Position {
    /// True when every coordinate is finite (no NaN, no infinity).
    pub fn is_finite(&self) -> bool {
        self.x.is_finite() && self.y.is_finite() && self.z.is_finite()
    }
}
