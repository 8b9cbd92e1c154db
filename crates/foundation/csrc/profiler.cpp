// libtorch's Kineto profiler (what torch.profiler drives), which tch does not expose, behind a
// C ABI: start it, and stop it writing the device time of every kernel name, largest first.
//
// Every function returns NULL on success or a malloc'd error message (free it with
// `llava_profiler_free_message`); no C++ exception crosses into Rust.

#include <llava_ffi.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace prof = torch::profiler::impl;

std::set<prof::ActivityType> activities(bool cuda) {
    std::set<prof::ActivityType> set{prof::ActivityType::CPU};
    if (cuda) set.insert(prof::ActivityType::CUDA);
    return set;
}

}  // namespace

extern "C" {

void llava_profiler_free_message(char *message) { free(message); }

// Starts recording operators (and, with `cuda`, device kernels and copies).
char *llava_profiler_start(bool cuda) {
    return llava_ffi::guarded([&] {
        prof::ProfilerConfig config(prof::ProfilerState::KINETO);
        torch::autograd::profiler::prepareProfiler(config, activities(cuda));
        torch::autograd::profiler::enableProfiler(config, activities(cuda));
    });
}

// Stops recording and writes `path`: one tab-separated line per device kernel (or, without
// device events, per operator) -- total milliseconds, calls, name -- largest total first.
char *llava_profiler_stop(const char *path) {
    return llava_ffi::guarded([&] {
        auto result = torch::autograd::profiler::disableProfiler();
        std::map<std::string, std::pair<uint64_t, uint64_t>> device, host;
        for (const auto &event : result->events()) {
            auto &table = event.deviceType() == c10::DeviceType::CPU ? host : device;
            auto &slot = table[event.name().substr(0, 240)];
            slot.first += event.durationNs();
            slot.second += 1;
        }
        const auto &table = device.empty() ? host : device;
        std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> rows(table.begin(),
                                                                                  table.end());
        std::sort(rows.begin(), rows.end(),
                  [](const auto &a, const auto &b) { return a.second.first > b.second.first; });
        std::ofstream out(path);
        out << "total_ms\tcalls\tname\n";
        for (const auto &[name, stats] : rows) {
            out << stats.first / 1e6 << '\t' << stats.second << '\t' << name << '\n';
        }
        if (!out) throw std::runtime_error(std::string("cannot write ") + path);
    });
}
}
