// Runs an ONNX model whose custom nodes live in a custom-op library, without Python.
// Usage:  run_model MODEL.onnx LIBRARY.so N   (feeds the float32 vector [0, 1, ..., N-1])
// Build:  g++ -std=c++17 run_model.cc -I$ORT/include -L$ORT/lib -lonnxruntime -o run_model
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL.onnx LIBRARY.so N\n", argv[0]);
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "run_model");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(argv[2]);  // the library opbridge built
    Ort::Session session(env, argv[1], options);

    const int64_t n = std::atoll(argv[3]);
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i);
    const int64_t shape[] = {n};
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value input = Ort::Value::CreateTensor<float>(memory, x.data(), x.size(), shape, 1);

    Ort::AllocatorWithDefaultOptions allocator;
    auto input_name = session.GetInputNameAllocated(0, allocator);
    auto output_name = session.GetOutputNameAllocated(0, allocator);
    const char* input_names[] = {input_name.get()};
    const char* output_names[] = {output_name.get()};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &input, 1, output_names, 1);

    const float* y = outputs[0].GetTensorData<float>();
    const size_t count = outputs[0].GetTensorTypeAndShapeInfo().GetElementCount();
    for (size_t i = 0; i < count; ++i) std::printf("%g%c", y[i], i + 1 < count ? ' ' : '\n');
    return 0;
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
