// kiln-run: run a Kiln artifact without Python. Links only TVM's runtime (libtvm_runtime.so, libtvm_ffi.so), so the
// same source builds for the machine the artifact targets (e.g. aarch64 for a Raspberry Pi) and is what an edge
// application embeds.
//
//   kiln-run MODEL.so [-i INPUT.npy ...] [-o OUTDIR] [--repeat N]
//
// Inputs are .npy files in the order of the manifest's inputs (zeros when none are given); each output is written
// as OUTDIR/NAME.npy. With --repeat N the model runs N more times and the median latency is printed.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// the artifact: [library][weights][manifest JSON][32-byte seal: sha256 of all before it][u64 length][magic]
constexpr char kMagic[] = "KILNMF02";
constexpr char kUnsealedMagic[] = "KILNMF01";  // format 1: no seal, refused
constexpr int kDeviceCPU = 1;
constexpr int kPooledAllocator = 2;

struct Spec {
  std::string name, dtype;
  std::vector<int64_t> shape;  // -1 for a symbolic dimension
  bool ranged = false;         // an integer input that indexes a tensor: its values stay in [low, high]
  int64_t low = 0, high = 0;
};

struct Weight {
  std::string dtype;
  std::vector<int64_t> shape;
  size_t offset;  // in the artifact file
};

struct Manifest {
  std::vector<Spec> inputs, outputs;
  std::string target, arch;
  std::vector<Weight> weights;  // what main takes after the inputs (format 3), read where the artifact is mapped
};

struct CPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::malloc(std::max<size_t>(ffi::GetDataSize(*t), 1)); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const std::string& problem, const std::string& fix) {
  throw std::runtime_error(problem + " (" + fix + ")");
}

// A tensor over memory someone else owns (a weight in the mapped artifact).
struct BorrowedAlloc {
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

// The artifact mapped copy-on-write (the kernels never write the weights): they are used where they lie, one copy
// in memory.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) Fail("cannot read " + path, "check the path");
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      close(fd);
      Fail(path + " is not a regular file", "pass the .so file written by `kiln compile`");
    }
    size_ = static_cast<size_t>(st.st_size);
    void* at = size_ ? mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : nullptr;
    close(fd);
    if (at == MAP_FAILED) Fail("cannot map " + path, "check that it is readable");
    data_ = static_cast<const char*>(at);
  }
  ~MappedFile() {
    if (data_) munmap(const_cast<char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  std::string Slice(size_t at, size_t length) const { return std::string(data_ + at, length); }

 private:
  const char* data_ = nullptr;
  size_t size_ = 0;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("cannot read " + path, "check the path");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<Spec> ReadSpecs(const ffi::json::Array& list) {
  std::vector<Spec> specs;
  for (const ffi::Any& item : list) {
    auto obj = item.cast<ffi::json::Object>();
    Spec spec{obj["name"].cast<ffi::String>(), obj["dtype"].cast<ffi::String>(), {}};
    for (const ffi::Any& dim : obj["shape"].cast<ffi::json::Array>()) {
      auto size = dim.try_cast<int64_t>();
      spec.shape.push_back(size.has_value() ? *size : -1);
    }
    auto range = obj.find("valid_range");
    if (range != obj.end() && (*range).second != nullptr) {
      auto bounds = (*range).second.cast<ffi::json::Array>();
      spec.ranged = true;
      spec.low = bounds[0].cast<int64_t>();
      spec.high = bounds[1].cast<int64_t>();
    }
    specs.push_back(spec);
  }
  return specs;
}

// SHA-256 (FIPS 180-4), fed in pieces: one pass over the artifact gives both the library's digest (checked
// against the manifest) and the digest of library and manifest together (the seal), as runtime.load checks them.
class Sha256 {
 public:
  void Update(const char* data, size_t size) {
    length_ += size;
    if (!pending_.empty()) {
      size_t take = std::min(size, 64 - pending_.size());
      pending_.append(data, take);
      data += take;
      size -= take;
      if (pending_.size() < 64) return;
      Block(reinterpret_cast<const unsigned char*>(pending_.data()));
      pending_.clear();
    }
    for (; size >= 64; data += 64, size -= 64) Block(reinterpret_cast<const unsigned char*>(data));
    pending_.assign(data, size);
  }

  // The 32-byte digest of everything fed so far; the state stays open for more.
  std::string Digest() const {
    Sha256 done = *this;
    std::string tail = pending_ + static_cast<char>(0x80);
    while (tail.size() % 64 != 56) tail += '\0';
    uint64_t bits = length_ * 8;
    for (int i = 7; i >= 0; --i) tail += static_cast<char>((bits >> (8 * i)) & 0xff);
    for (size_t at = 0; at < tail.size(); at += 64)
      done.Block(reinterpret_cast<const unsigned char*>(tail.data() + at));
    std::string out;
    for (uint32_t v : done.h_)
      for (int i = 24; i >= 0; i -= 8) out += static_cast<char>((v >> i) & 0xff);
    return out;
  }

  std::string Hex() const {
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned char c : Digest()) {
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
    return out;
  }

 private:
  void Block(const unsigned char* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = (p[4 * i] << 24) | (p[4 * i + 1] << 16) | (p[4 * i + 2] << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], hh = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h_[0] += a; h_[1] += b; h_[2] += c; h_[3] += d; h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += hh;
  }

  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string pending_;  // the bytes after the last whole 64-byte block
  uint64_t length_ = 0;
};

constexpr int64_t kFormatVersion = 3;  // the newest artifact format this runner reads (runtime/artifact.py)
constexpr size_t kTensorAlignment = 64;  // of each weight, as runtime/artifact.py writes them

[[noreturn]] void DamagedWeights() {
  Fail("damaged manifest (its weights entry does not fit the file)", "rebuild it with `kiln compile`");
}

// The weights entry of a format-3 manifest, checked against the BODY bytes of library and weights.
std::vector<Weight> ReadWeights(const ffi::json::Object& obj, size_t body, size_t* weights_bytes) {
  std::vector<Weight> weights;
  *weights_bytes = 0;
  auto entry = obj.find("weights");
  if (entry == obj.end() || (*entry).second == nullptr) return weights;
  auto part = (*entry).second.cast<ffi::json::Object>();
  if (part.empty()) return weights;
  int64_t offset = part["offset"].cast<int64_t>(), size = part["bytes"].cast<int64_t>();
  if (offset <= 0 || size < 0 || static_cast<size_t>(offset + size) != body) DamagedWeights();
  for (const ffi::Any& item : part["tensors"].cast<ffi::json::Array>()) {
    auto tensor = item.cast<ffi::json::Object>();
    Weight weight{tensor["dtype"].cast<ffi::String>(), {}, 0};
    int64_t at = tensor["offset"].cast<int64_t>(), count = 1;
    for (const ffi::Any& dim : tensor["shape"].cast<ffi::json::Array>()) {
      int64_t d = dim.cast<int64_t>();
      if (d < 0 || (d > 0 && count > size / d)) DamagedWeights();
      count *= d;
      weight.shape.push_back(d);
    }
    DLDataType dl = ffi::StringToDLDataType(weight.dtype);
    int64_t bytes = count * ((dl.bits * dl.lanes + 7) / 8);
    if (at < 0 || at % kTensorAlignment != 0 || at > size || bytes > size - at) DamagedWeights();
    weight.offset = static_cast<size_t>(offset + at);
    weights.push_back(weight);
  }
  *weights_bytes = static_cast<size_t>(size);
  return weights;
}

Manifest ReadManifest(const MappedFile& artifact) {
  const size_t trailer = 48, size = artifact.size();
  const char* data = artifact.data();
  if (size >= 8 && std::memcmp(data + size - 8, kUnsealedMagic, 8) == 0)
    Fail("artifact format 1, whose manifest is not sealed to its library",
         "rebuild it with `kiln compile` (this kiln-run reads formats 2 and 3)");
  if (size < trailer || std::memcmp(data + size - 8, kMagic, 8) != 0)
    Fail("not a Kiln artifact (no manifest)", "build one with `kiln compile`");
  uint64_t length;
  std::memcpy(&length, data + size - 16, sizeof(length));
  if (length > size - trailer) Fail("damaged artifact trailer", "rebuild it with `kiln compile`");
  ffi::String error;
  ffi::json::Value parsed = ffi::json::Parse(artifact.Slice(size - trailer - length, length), &error);
  if (!error.empty()) Fail("damaged manifest: " + std::string(error), "rebuild it with `kiln compile`");
  auto obj = parsed.cast<ffi::json::Object>();
  int64_t format = obj["format_version"].cast<int64_t>();
  if (format > kFormatVersion)
    Fail("artifact format " + std::to_string(format) + " is newer than this kiln-run reads (" +
             std::to_string(kFormatVersion) + ")", "rebuild kiln-run with `kiln bundle` from the same Kiln");
  size_t body = size - trailer - length, weights_bytes;
  std::vector<Weight> weights = ReadWeights(obj, body, &weights_bytes);
  size_t library = body - weights_bytes;
  Sha256 seal;
  seal.Update(data, library);
  if (seal.Hex() != std::string(obj["library_sha256"].cast<ffi::String>()))
    Fail("the library does not match the sha256 recorded in its manifest (damaged or altered)",
         "rebuild it with `kiln compile`");
  if (!weights.empty()) {
    Sha256 part;
    part.Update(data + library, weights_bytes);
    auto recorded = obj["weights"].cast<ffi::json::Object>()["sha256"].cast<ffi::String>();
    if (part.Hex() != std::string(recorded))
      Fail("the weights do not match the sha256 recorded in its manifest (damaged or altered)",
           "rebuild it with `kiln compile`");
  }
  seal.Update(data + library, weights_bytes + length);
  if (seal.Digest() != artifact.Slice(size - trailer, 32))
    Fail("the manifest does not match the seal written with it (edited after `kiln compile`)",
         "rebuild it with `kiln compile`; edit the model, never the manifest");
  return {ReadSpecs(obj["inputs"].cast<ffi::json::Array>()), ReadSpecs(obj["outputs"].cast<ffi::json::Array>()),
          obj["target"].cast<ffi::String>(), obj["arch"].cast<ffi::String>(), weights};
}

// The weights as tensors over the mapped artifact (no copy).
std::vector<ffi::Tensor> MapWeights(const Manifest& manifest, const MappedFile& artifact) {
  std::vector<ffi::Tensor> tensors;
  for (const Weight& weight : manifest.weights) {
    void* at = const_cast<char*>(artifact.data() + weight.offset);
    tensors.push_back(ffi::Tensor::FromNDAlloc(BorrowedAlloc{at}, ffi::ShapeView(weight.shape.data(),
                                               weight.shape.size()), ffi::StringToDLDataType(weight.dtype),
                                               DLDevice{kDLCPU, 0}));
  }
  return tensors;
}

// numpy dtype string <-> DLPack dtype, for the dtypes Kiln models take and return.
struct DType {
  const char* numpy;
  const char* name;
  DLDataType dl;
};
const DType kDTypes[] = {
    {"<f4", "float32", {kDLFloat, 32, 1}}, {"<f2", "float16", {kDLFloat, 16, 1}},
    {"<f8", "float64", {kDLFloat, 64, 1}}, {"|i1", "int8", {kDLInt, 8, 1}},
    {"|u1", "uint8", {kDLUInt, 8, 1}},     {"<i4", "int32", {kDLInt, 32, 1}},
    {"<i8", "int64", {kDLInt, 64, 1}},     {"|b1", "bool", {kDLBool, 8, 1}},
};

const DType& ByName(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.name) return d;
  Fail("dtype " + name + " is not supported by kiln-run", "use the Python runtime");
}

const DType& ByDL(DLDataType dl) {
  for (const DType& d : kDTypes)
    if (d.dl.code == dl.code && d.dl.bits == dl.bits) return d;
  Fail("an output dtype is not supported by kiln-run", "use the Python runtime");
}

std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) Fail(".npy header has no " + key, "write the file with numpy.save");
  at = header.find_first_not_of(' ', at + key.size() + 3);
  size_t end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

template <typename T>
void CheckValues(const T* values, size_t count, const Spec& spec, const std::string& path) {
  for (size_t i = 0; i < count; ++i) {
    auto value = static_cast<int64_t>(values[i]);
    if (value < spec.low || value > spec.high)
      Fail("input '" + spec.name + "' in " + path + " holds " + std::to_string(value) + " at flat index " +
               std::to_string(i) + ", outside [" + std::to_string(spec.low) + ", " + std::to_string(spec.high) +
               "]: the model indexes a tensor with it",
           "pass values from " + std::to_string(spec.low) + " to " + std::to_string(spec.high));
  }
}

// The Python runtime's check of TensorSpec.valid_range: a token id past the vocabulary is refused, not clamped.
void CheckRange(const ffi::Tensor& tensor, const Spec& spec, const std::string& path) {
  size_t count = ffi::GetDataSize(*tensor.GetDLTensorPtr()) / ((tensor.dtype().bits + 7) / 8);
  const void* data = tensor.data_ptr();
  if (spec.dtype == "int64") CheckValues(static_cast<const int64_t*>(data), count, spec, path);
  else if (spec.dtype == "int32") CheckValues(static_cast<const int32_t*>(data), count, spec, path);
  else if (spec.dtype == "int16") CheckValues(static_cast<const int16_t*>(data), count, spec, path);
  else if (spec.dtype == "int8") CheckValues(static_cast<const int8_t*>(data), count, spec, path);
  else if (spec.dtype == "uint8") CheckValues(static_cast<const uint8_t*>(data), count, spec, path);
}

ffi::Tensor LoadNpy(const std::string& path, const Spec& spec) {
  std::string data = ReadFile(path);
  if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0) Fail(path + " is not a .npy file", "use numpy.save");
  size_t header_len, offset;
  if (data[6] == 1) {
    header_len = static_cast<uint8_t>(data[8]) | (static_cast<uint8_t>(data[9]) << 8);
    offset = 10;
  } else {
    uint32_t len;
    std::memcpy(&len, data.data() + 8, 4);
    header_len = len;
    offset = 12;
  }
  std::string header = data.substr(offset, header_len);
  std::string descr = HeaderValue(header, "descr");
  descr = descr.substr(1, descr.size() - 2);
  if (HeaderValue(header, "fortran_order") != "False") Fail(path + " is Fortran-ordered", "save a C-ordered array");
  std::string dims = HeaderValue(header, "shape");
  std::vector<int64_t> shape;
  for (size_t i = 1; i < dims.size();) {
    size_t next;
    long long value = std::strtoll(dims.c_str() + i, nullptr, 10);
    next = dims.find(',', i);
    if (dims.find_first_of("0123456789", i) < std::min(next, dims.size() - 1)) shape.push_back(value);
    if (next == std::string::npos) break;
    i = next + 1;
  }
  const DType& dtype = ByName(spec.dtype);
  if (descr != dtype.numpy) Fail("input '" + spec.name + "' in " + path + " has dtype " + descr, "expected " + spec.dtype);
  bool ok = shape.size() == spec.shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = spec.shape[i] < 0 || spec.shape[i] == shape[i];
  if (!ok) Fail("input '" + spec.name + "' in " + path + " has the wrong shape", "see `kiln inspect` for its shape");
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype.dl,
                                                DLDevice{kDLCPU, 0});
  size_t bytes = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  if (data.size() - offset - header_len != bytes) Fail(path + " is truncated", "write it again with numpy.save");
  std::memcpy(tensor.data_ptr(), data.data() + offset + header_len, bytes);
  if (spec.ranged) CheckRange(tensor, spec, path);
  return tensor;
}

ffi::Tensor Zeros(const Spec& spec) {
  std::vector<int64_t> shape;
  for (int64_t d : spec.shape) {
    if (d < 0) Fail("input '" + spec.name + "' has symbolic dimensions", "pass it with -i FILE.npy");
    shape.push_back(d);
  }
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                ByName(spec.dtype).dl, DLDevice{kDLCPU, 0});
  std::memset(tensor.data_ptr(), 0, ffi::GetDataSize(*tensor.GetDLTensorPtr()));
  return tensor;
}

void SaveNpy(const std::string& path, const ffi::Tensor& tensor) {
  const DLTensor* t = tensor.GetDLTensorPtr();
  std::string shape = "(";
  for (int i = 0; i < t->ndim; ++i) shape += std::to_string(t->shape[i]) + (t->ndim == 1 ? "," : i + 1 < t->ndim ? ", " : "");
  shape += ")";
  std::string header = "{'descr': '" + std::string(ByDL(t->dtype).numpy) + "', 'fortran_order': False, 'shape': " +
                       shape + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // numpy pads the header to a multiple of 64 bytes
  header += '\n';
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    uint16_t len = static_cast<uint16_t>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(reinterpret_cast<const char*>(&len), 2);
    f << header;
    f.write(static_cast<const char*>(t->data), static_cast<std::streamsize>(ffi::GetDataSize(*t)));
    if (!f) Fail("cannot write " + tmp, "check the output folder");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) Fail("cannot write " + path, "check the output folder");
}

std::vector<ffi::Tensor> Outputs(const ffi::Any& result) {
  if (auto tensor = result.try_cast<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> out;
  for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) out.push_back(item.cast<ffi::Tensor>());
  return out;
}

int Run(int argc, char** argv) {
  std::string model, outdir;
  std::vector<std::string> inputs;
  int repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-i" || arg == "-o" || arg == "--repeat") && i + 1 >= argc) Fail(arg + " needs a value", "see --help");
    if (arg == "-i") inputs.push_back(argv[++i]);
    else if (arg == "-o") outdir = argv[++i];
    else if (arg == "--repeat") repeat = std::atoi(argv[++i]);
    else if (arg == "-h" || arg == "--help") {
      std::cout << "usage: kiln-run MODEL.so [-i INPUT.npy ...] [-o OUTDIR] [--repeat N]\n";
      return 0;
    } else if (model.empty()) model = arg;
    else Fail("unexpected argument " + arg, "see --help");
  }
  if (model.empty()) Fail("no model given", "usage: kiln-run MODEL.so [-i INPUT.npy ...] [-o OUTDIR]");
  MappedFile artifact(model);
  Manifest manifest = ReadManifest(artifact);
  if (!inputs.empty() && inputs.size() != manifest.inputs.size())
    Fail("the model takes " + std::to_string(manifest.inputs.size()) + " input(s), got " +
             std::to_string(inputs.size()), "pass one -i FILE.npy per input, in manifest order");
  std::vector<ffi::Tensor> tensors;
  for (size_t i = 0; i < manifest.inputs.size(); ++i)
    tensors.push_back(inputs.empty() ? Zeros(manifest.inputs[i]) : LoadNpy(inputs[i], manifest.inputs[i]));
  for (ffi::Tensor& weight : MapWeights(manifest, artifact)) tensors.push_back(weight);
  std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());

  // dlopen() searches the library path for a name without a slash: make it a path.
  ffi::Module library = ffi::Module::LoadFromFile(model.find('/') == std::string::npos ? "./" + model : model);
  ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(kDeviceCPU, 0, kPooledAllocator);
  ffi::Function main_fn = vm->GetFunction("main").value();
  ffi::Any result;
  main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
  std::vector<ffi::Tensor> outputs = Outputs(result);

  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::string name = i < manifest.outputs.size() ? manifest.outputs[i].name : "output_" + std::to_string(i);
    std::string file = name;
    std::replace(file.begin(), file.end(), '/', '_');  // ONNX names may hold slashes
    if (!outdir.empty()) SaveNpy(outdir + "/" + file + ".npy", outputs[i]);
    std::cout << name << ": " << ByDL(outputs[i].dtype()).name << "[";
    for (int d = 0; d < outputs[i].ndim(); ++d) std::cout << (d ? "x" : "") << outputs[i].shape()[d];
    std::cout << "]\n";
  }
  if (repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    std::cout << "median " << ms[ms.size() / 2] << " ms over " << repeat << " runs (target " << manifest.target
              << ")\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
}
