// N-API glue of the paged KV cache and tree attention: the KvCache and PagedBatch classes and
// the op functions (kvAppend, treeAttention, kvCommit, kvCopyPages, pagedBatch). No math here.
#include <memory>

#include "../core/kv_cache.h"
#include "napi_util.h"

namespace specdec {
namespace napi {

namespace {

// A PagedBatch handle (from KvCache.plan or pagedBatch()); immutable once built.
class PagedBatchWrap : public Napi::ObjectWrap<PagedBatchWrap> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "PagedBatch",
                                   {
                                       InstanceAccessor<&PagedBatchWrap::BatchSize>("batchSize"),
                                       InstanceAccessor<&PagedBatchWrap::TotalNew>("totalNew"),
                                       InstanceAccessor<&PagedBatchWrap::MaxQoLen>("maxQoLen"),
                                       InstanceAccessor<&PagedBatchWrap::MaxKvLen>("maxKvLen"),
                                       InstanceAccessor<&PagedBatchWrap::GetDevice>("device"),
                                       InstanceAccessor<&PagedBatchWrap::QoIndptr>("qoIndptr"),
                                       InstanceAccessor<&PagedBatchWrap::PageIndptr>("pageIndptr"),
                                       InstanceAccessor<&PagedBatchWrap::PageIndices>("pageIndices"),
                                       InstanceAccessor<&PagedBatchWrap::PrefixLen>("prefixLen"),
                                       InstanceMethod<&PagedBatchWrap::Dispose>("dispose"),
                                   });
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("PagedBatch", f);
  }

  static Napi::Object wrap(Napi::Env env, PagedBatch b) {
    auto* p = new std::shared_ptr<PagedBatch>(std::make_shared<PagedBatch>(std::move(b)));
    Napi::Object o = ctor->New({Napi::External<std::shared_ptr<PagedBatch>>::New(env, p)});
    delete p;
    return o;
  }

  static const PagedBatch& arg(const Napi::Value& v, const char* name) {
    SPECDEC_CHECK(v.IsObject() && v.As<Napi::Object>().InstanceOf(ctor->Value()), "E_ARG", name,
                  ": expected a PagedBatch (from KvCache.plan or pagedBatch)");
    PagedBatchWrap* w = Unwrap(v.As<Napi::Object>());
    SPECDEC_CHECK(w->batch_ != nullptr, "E_DISPOSED", name, ": PagedBatch was disposed");
    return *w->batch_;
  }

  explicit PagedBatchWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PagedBatchWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw make_error(info.Env(), "E_ARG", "PagedBatch: use KvCache.plan() or pagedBatch() to create one");
    batch_ = *info[0].As<Napi::External<std::shared_ptr<PagedBatch>>>().Data();
  }

 private:
  std::shared_ptr<PagedBatch> batch_;

  const PagedBatch& get(const char* what) const {
    SPECDEC_CHECK(batch_ != nullptr, "E_DISPOSED", what, ": PagedBatch was disposed");
    return *batch_;
  }
  static Napi::Value i32(Napi::Env env, const std::vector<int32_t>& v) {
    auto a = Napi::Int32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    return a;
  }
  Napi::Value BatchSize(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(get("batchSize").batch_size())); });
  }
  Napi::Value TotalNew(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(get("totalNew").total_new())); });
  }
  Napi::Value MaxQoLen(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), get("maxQoLen").max_qo_len); });
  }
  Napi::Value MaxKvLen(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), get("maxKvLen").max_kv_len); });
  }
  Napi::Value GetDevice(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::String::New(info.Env(), device_name(get("device").qo_indptr.device()));
    });
  }
  Napi::Value QoIndptr(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return i32(info.Env(), get("qoIndptr").h_qo_indptr); });
  }
  Napi::Value PageIndptr(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return i32(info.Env(), get("pageIndptr").h_page_indptr); });
  }
  Napi::Value PageIndices(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return i32(info.Env(), get("pageIndices").h_page_indices); });
  }
  Napi::Value PrefixLen(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return i32(info.Env(), get("prefixLen").h_prefix_len); });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    batch_.reset();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference* PagedBatchWrap::ctor = nullptr;

class KvCacheWrap : public Napi::ObjectWrap<KvCacheWrap> {
 public:
  static Napi::FunctionReference* ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "KvCache",
                                   {
                                       InstanceMethod<&KvCacheWrap::AddSequence>("addSequence"),
                                       InstanceMethod<&KvCacheWrap::Fork>("fork"),
                                       InstanceMethod<&KvCacheWrap::Free>("free"),
                                       InstanceMethod<&KvCacheWrap::Truncate>("truncate"),
                                       InstanceMethod<&KvCacheWrap::Length>("length"),
                                       InstanceMethod<&KvCacheWrap::Alive>("alive"),
                                       InstanceMethod<&KvCacheWrap::Plan>("plan"),
                                       InstanceMethod<&KvCacheWrap::Commit>("commit"),
                                       InstanceMethod<&KvCacheWrap::Layer>("layer"),
                                       InstanceMethod<&KvCacheWrap::Dispose>("dispose"),
                                       InstanceAccessor<&KvCacheWrap::FreePages>("freePages"),
                                       InstanceAccessor<&KvCacheWrap::TotalPages>("totalPages"),
                                       InstanceAccessor<&KvCacheWrap::Bytes>("bytes"),
                                       InstanceAccessor<&KvCacheWrap::Disposed>("disposed"),
                                   });
    exports.Set("KvCache", f);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
  }

  static KvCache& arg(const Napi::Value& v, const char* name) {
    SPECDEC_CHECK(ctor != nullptr && v.IsObject() && v.As<Napi::Object>().InstanceOf(ctor->Value()), "E_ARG", name,
                  ": expected a native KvCache");
    return Unwrap(v.As<Napi::Object>())->get(name);
  }

  // new KvCache({ numLayers, numKvHeads, headDim, pageSize, numPages, dtype, device })
  explicit KvCacheWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvCacheWrap>(info) {
    guard(info.Env(), [&]() -> Napi::Value {
      SPECDEC_CHECK(info.Length() >= 1 && info[0].IsObject(), "E_ARG", "options: expected an object");
      Napi::Object o = info[0].As<Napi::Object>();
      KvCacheConfig c;
      c.num_layers = static_cast<int>(get_int(get_field(o, "numLayers"), "numLayers"));
      c.num_kv_heads = static_cast<int>(get_int(get_field(o, "numKvHeads"), "numKvHeads"));
      c.head_dim = static_cast<int>(get_int(get_field(o, "headDim"), "headDim"));
      c.page_size = has_field(o, "pageSize") ? static_cast<int>(get_int(get_field(o, "pageSize"), "pageSize")) : 16;
      c.num_pages = static_cast<int>(get_int(get_field(o, "numPages"), "numPages"));
      c.dtype = has_field(o, "dtype") ? get_dtype(get_field(o, "dtype"), "dtype") : DType::f16;
      c.device = get_device(get_field(o, "device"), "device");
      cache_ = std::make_unique<KvCache>(c);
      if (c.device == Device::cpu) {
        tracked_ = static_cast<int64_t>(cache_->bytes());
        Napi::MemoryManagement::AdjustExternalMemory(info.Env(), tracked_);
      }
      return info.Env().Undefined();
    });
  }
  ~KvCacheWrap() override { release(Env()); }

 private:
  std::unique_ptr<KvCache> cache_;
  int64_t tracked_ = 0;

  void release(Napi::Env env) {
    if (tracked_) Napi::MemoryManagement::AdjustExternalMemory(env, -tracked_);
    tracked_ = 0;
    cache_.reset();
  }
  KvCache& get(const char* what) {
    SPECDEC_CHECK(cache_ != nullptr, "E_DISPOSED", what, ": KvCache was disposed");
    return *cache_;
  }
  static std::vector<int> ints(const Napi::Value& v, const char* name) {
    std::vector<int32_t> a = get_i32_array(v, name);
    return std::vector<int>(a.begin(), a.end());
  }

  Napi::Value AddSequence(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), get("addSequence").add_sequence()); });
  }
  Napi::Value Fork(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), get("fork").fork(static_cast<int>(get_int(info[0], "seq"))));
    });
  }
  Napi::Value Free(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      get("free").free(static_cast<int>(get_int(info[0], "seq")));
      return info.Env().Undefined();
    });
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      get("truncate").truncate(static_cast<int>(get_int(info[0], "seq")), static_cast<int>(get_int(info[1], "len")));
      return info.Env().Undefined();
    });
  }
  Napi::Value Length(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), get("length").length(static_cast<int>(get_int(info[0], "seq"))));
    });
  }
  Napi::Value Alive(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Boolean::New(info.Env(), get("alive").alive(static_cast<int>(get_int(info[0], "seq"))));
    });
  }
  // plan(seqs, newTokens) -> PagedBatch
  Napi::Value Plan(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      KvCache& c = get("plan");
      return PagedBatchWrap::wrap(info.Env(), c.plan(ints(info[0], "seqs"), ints(info[1], "newTokens")));
    });
  }
  // commit(batch, seqs, accepted: Int32Array[]) -- accepted[i]: new-token indices of seqs[i], increasing.
  Napi::Value Commit(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      KvCache& c = get("commit");
      const PagedBatch& batch = PagedBatchWrap::arg(info[0], "batch");
      std::vector<int> seqs = ints(info[1], "seqs");
      SPECDEC_CHECK(info[2].IsArray(), "E_ARG", "accepted: expected an array of Int32Array (one per sequence)");
      Napi::Array acc = info[2].As<Napi::Array>();
      SPECDEC_CHECK(acc.Length() == seqs.size(), "E_ARG", "accepted: ", acc.Length(), " entries for ", seqs.size(),
                    " sequences");
      std::vector<int32_t> indptr{0}, nodes;
      for (uint32_t i = 0; i < acc.Length(); ++i) {
        std::string name = str("accepted[", i, "]");
        std::vector<int32_t> a = get_i32_array(acc.Get(i), name.c_str());
        nodes.insert(nodes.end(), a.begin(), a.end());
        indptr.push_back(static_cast<int32_t>(nodes.size()));
      }
      c.commit(batch, seqs, indptr, nodes);
      return info.Env().Undefined();
    });
  }
  Napi::Value Layer(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return wrap_tensor(info.Env(), get("layer").layer(static_cast<int>(get_int(info[0], "layer"))));
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value FreePages(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), get("freePages").free_pages()); });
  }
  Napi::Value TotalPages(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), get("totalPages").total_pages()); });
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), double(get("bytes").bytes())); });
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), cache_ == nullptr); }
};
Napi::FunctionReference* KvCacheWrap::ctor = nullptr;


// pagedBatch({ qoIndptr, pageIndptr, pageIndices, prefixLen, pageSize, numPages, device })
Napi::Value MakePagedBatch(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    SPECDEC_CHECK(info.Length() >= 1 && info[0].IsObject(), "E_ARG", "options: expected an object");
    Napi::Object o = info[0].As<Napi::Object>();
    return PagedBatchWrap::wrap(
        info.Env(), PagedBatch::make(get_i32_array(get_field(o, "qoIndptr"), "qoIndptr"), get_i32_array(get_field(o, "pageIndptr"), "pageIndptr"),
                                     get_i32_array(get_field(o, "pageIndices"), "pageIndices"),
                                     get_i32_array(get_field(o, "prefixLen"), "prefixLen"),
                                     static_cast<int>(get_int(get_field(o, "pageSize"), "pageSize")),
                                     static_cast<int>(get_int(get_field(o, "numPages"), "numPages")), get_device(get_field(o, "device"), "device")));
  });
}

// kvAppend(kvLayer, k, v, batch)
Napi::Value KvAppend(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor kv = tensor_arg(info[0], "kvLayer");
    ops::kv_append(kv, tensor_arg(info[1], "k"), tensor_arg(info[2], "v"), PagedBatchWrap::arg(info[3], "batch"));
    return info.Env().Undefined();
  });
}

// treeAttention(q, kvLayer, batch, mask | undefined, smScale, out?, window?, softcap?) -> out
Napi::Value TreeAttention(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor q = tensor_arg(info[0], "q");
    Tensor kv = tensor_arg(info[1], "kvLayer");
    const PagedBatch& batch = PagedBatchWrap::arg(info[2], "batch");
    Tensor mask = optional_tensor_arg(info[3], "mask");
    float scale = static_cast<float>(get_number(info[4], "smScale"));
    bool given = info.Length() > 5 && !info[5].IsUndefined() && !info[5].IsNull();
    Tensor out = given ? tensor_arg(info[5], "out") : Tensor::empty(q.dtype(), q.shape(), q.device());
    int window = 0;
    if (info.Length() > 6 && !info[6].IsUndefined()) {
      const double w = get_number(info[6], "window");
      SPECDEC_CHECK(w >= 0 && w <= 2147483647.0 && w == static_cast<double>(static_cast<int64_t>(w)), "E_ARG",
                    "window: expected an integer >= 0 (0: no sliding window), got ", w);
      window = static_cast<int>(w);
    }
    const float softcap = info.Length() > 7 && !info[7].IsUndefined() ? static_cast<float>(get_number(info[7], "softcap")) : 0.f;
    ops::tree_attention(q, kv, batch, mask, scale, out, window, softcap);
    return given ? info[5] : Napi::Value(wrap_tensor(info.Env(), out));
  });
}

// kvCommit(layers, batch, accIndptr, accNodes): the raw op (KvCache.commit does the bookkeeping).
Napi::Value KvCommit(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    ops::kv_commit(tensor_list_arg(info[0], "layers"), PagedBatchWrap::arg(info[1], "batch"), tensor_arg(info[2], "accIndptr"),
                   tensor_arg(info[3], "accNodes"));
    return info.Env().Undefined();
  });
}

// kvCopyPages(layers, srcPages, dstPages)
Napi::Value KvCopyPages(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    ops::kv_copy_pages(tensor_list_arg(info[0], "layers"), tensor_arg(info[1], "srcPages"), tensor_arg(info[2], "dstPages"));
    return info.Env().Undefined();
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  PagedBatchWrap::Init(env, exports);
  KvCacheWrap::Init(env, exports);
  exports.Set("pagedBatch", Napi::Function::New(env, MakePagedBatch, "pagedBatch"));
  exports.Set("kvAppend", Napi::Function::New(env, KvAppend, "kvAppend"));
  exports.Set("treeAttention", Napi::Function::New(env, TreeAttention, "treeAttention"));
  exports.Set("kvCommit", Napi::Function::New(env, KvCommit, "kvCommit"));
  exports.Set("kvCopyPages", Napi::Function::New(env, KvCopyPages, "kvCopyPages"));
}
Registrar reg(&Init);

}  // namespace

const PagedBatch& paged_batch_arg(const Napi::Value& v, const char* name) { return PagedBatchWrap::arg(v, name); }
KvCache& kv_cache_arg(const Napi::Value& v, const char* name) { return KvCacheWrap::arg(v, name); }

}  // namespace napi
}  // namespace specdec
