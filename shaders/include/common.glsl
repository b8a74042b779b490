// Shared helpers. Every shader includes this first.
#extension GL_EXT_control_flow_attributes : enable

// Index of this work group in the 2-D grid the host splits large dispatches into.
uint group_index() {
    return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}

// Global invocation index for 1-D work over the 2-D grid. A macro, not a function:
// gl_WorkGroupSize is only known after the shader's local_size declaration.
#define GLOBAL_INDEX (group_index() * gl_WorkGroupSize.x + gl_LocalInvocationID.x)
