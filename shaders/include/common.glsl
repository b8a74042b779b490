// Shared helpers. Every shader includes this first.
#extension GL_EXT_control_flow_attributes : enable

// Index of this work group in the 2-D grid the host splits large dispatches into.
uint group_index() {
    return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}

// The sum of a vec4's components, pairwise.
float hsum(vec4 v) { return (v.x + v.y) + (v.z + v.w); }

// Global invocation index for 1-D work over the 2-D grid. A macro, not a function:
// gl_WorkGroupSize is only known after the shader's local_size declaration.
#define GLOBAL_INDEX (group_index() * gl_WorkGroupSize.x + gl_LocalInvocationID.x)

// Slotted state (vkinfer/engine.py): a state buffer part holds slots slot_lo .. slot_lo +
// n_slots - 1, and each row or sequence reads its slot from a u32 buffer. Returns the slot's
// index within the part, or NO_SLOT for a slot elsewhere (or the padding rows' NO_SLOT).
#define NO_SLOT 0xFFFFFFFFu
uint slot_in_part(uint slot, uint slot_lo, uint n_slots) {
    return slot - slot_lo < n_slots ? slot - slot_lo : NO_SLOT;
}
