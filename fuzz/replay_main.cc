// Plain driver for the fuzz targets where libFuzzer is not available (gcc; CI): links with one
// target and
//   replay PATH...               runs every file (directories: every file inside) once;
//   replay --mutate N SEED PATH... then runs N byte-level mutants of those files (flips, inserts,
//                                erasures, edge values), seeded, so CI explores a little too;
//   replay --write-seeds DIR     writes the target's seed inputs (fuzz::seed_inputs) into DIR.
// A finding aborts (the sanitizers report first); the driver prints the input it was running.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_common.h"

namespace {

std::vector<std::string> expand(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {};
  if (!S_ISDIR(st.st_mode)) return {path};
  std::vector<std::string> out;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') {
        auto sub = expand(path + "/" + e->d_name);
        out.insert(out.end(), sub.begin(), sub.end());
      }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* current = "";          // named if the run dies
const std::string* current_bytes;  // a mutant that dies is saved, to become a regression input

void on_abort() {
  std::fprintf(stderr, "while running: %s\n", current);
  if (current_bytes) {
    std::ofstream("replay-crash-input", std::ios::binary) << *current_bytes;
    std::fprintf(stderr, "the input is saved as ./replay-crash-input\n");
  }
}

void run(const std::string& bytes) {
  // A copy of exactly `size` bytes, so that ASan sees a read past the end.
  std::vector<uint8_t> buf(bytes.begin(), bytes.end());
  LLVMFuzzerTestOneInput(buf.empty() ? nullptr : buf.data(), buf.size());
}

uint64_t next(uint64_t& s) {  // splitmix64
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string mutate(std::string s, uint64_t& rng) {
  const int edits = 1 + static_cast<int>(next(rng) % 4);
  for (int k = 0; k < edits; ++k) {
    const size_t at = s.empty() ? 0 : next(rng) % s.size();
    switch (next(rng) % 6) {
      case 0: if (!s.empty()) s[at] = static_cast<char>(s[at] ^ (1 << (next(rng) % 8))); break;
      case 1: s.insert(at, 1, static_cast<char>(next(rng))); break;
      case 2: if (!s.empty()) s.erase(at, 1 + next(rng) % 4); break;
      case 3: {
        static const uint8_t edge[] = {0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe};
        if (!s.empty()) s[at] = static_cast<char>(edge[next(rng) % sizeof(edge)]);
        break;
      }
      case 4: if (!s.empty()) s.resize(at); break;
      default: {  // copy a chunk of itself elsewhere
        if (s.empty()) break;
        const size_t len = 1 + next(rng) % std::min<size_t>(16, s.size() - at);
        s.insert(next(rng) % s.size(), s.substr(at, len));
      }
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int ac = argc;
  LLVMFuzzerInitialize(&ac, &argv);
  if (argc >= 3 && std::strcmp(argv[1], "--write-seeds") == 0) {
    std::vector<std::string> seeds;
    fuzz::seed_inputs(seeds);
    for (size_t i = 0; i < seeds.size(); ++i) {
      char name[32];
      std::snprintf(name, sizeof(name), "/seed-%02zu", i);
      std::ofstream(std::string(argv[2]) + name, std::ios::binary) << seeds[i];
    }
    std::printf("wrote %zu seeds\n", seeds.size());
    return 0;
  }
  long mutants = 0;
  uint64_t rng = 1;
  int first = 1;
  if (argc >= 4 && std::strcmp(argv[1], "--mutate") == 0) {
    mutants = std::atol(argv[2]);
    rng = std::strtoull(argv[3], nullptr, 10);
    first = 4;
  }
  std::vector<std::string> files;
  for (int i = first; i < argc; ++i) {
    auto f = expand(argv[i]);
    files.insert(files.end(), f.begin(), f.end());
  }
  std::signal(SIGABRT, [](int) { on_abort(); std::signal(SIGABRT, SIG_DFL); std::abort(); });
  std::vector<std::string> inputs;
  for (const std::string& f : files) {
    current = f.c_str();
    inputs.push_back(read_file(f));
    run(inputs.back());
  }
  static std::string label;
  for (long m = 0; m < mutants && !inputs.empty(); ++m) {
    const size_t from = next(rng) % inputs.size();
    label = "mutant " + std::to_string(m) + " of " + files[from] + " (rerun with the same --mutate arguments)";
    current = label.c_str();
    const std::string mutant = mutate(inputs[from], rng);
    current_bytes = &mutant;
    run(mutant);
    current_bytes = nullptr;
  }
  std::printf("replayed %zu inputs and %ld mutants: no findings\n", files.size(), mutants);
  return 0;
}
