// Node-API bindings of the GEMMs (gemm_cpu.h, gemm_cuda.h), registered by addon.cc's Init.
#pragma once
#include <napi.h>

void RegisterGemm(Napi::Env env, Napi::Object exports);
