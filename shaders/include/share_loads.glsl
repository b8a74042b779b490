// Loads that every invocation of a work group needs, shared among SHARE neighbouring invocations
// of a subgroup (specialization constant 2: the subgroup size on CPU devices, 1 for no
// sharing; vkinfer/gpu/device.py load_share). llvmpipe turns each buffer load into a loop over
// its SIMD lanes even when all of them read one address, so each of SHARE neighbours loads a
// part (SHARE_ID: which) and from_lane hands the parts round. Needs subgroup shuffles.
#extension GL_KHR_shader_subgroup_shuffle : require
layout(constant_id = 2) const uint SHARE = 1u;
#define SHARE_ID (gl_SubgroupInvocationID % SHARE)

// The value `mine` of invocation i of this invocation's SHARE neighbours.
vec4 from_lane(vec4 mine, uint i) {
    return SHARE == 1u ? mine : subgroupShuffle(mine, gl_SubgroupInvocationID - SHARE_ID + i);
}
