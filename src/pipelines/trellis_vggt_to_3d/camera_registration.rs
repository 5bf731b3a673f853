//! Puts VGGT's cameras into the generated asset's frame (see the module docs once written).
