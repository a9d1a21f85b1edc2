#include "mlip_json.h"

#include <cstdlib>
#include <stdexcept>

namespace MLIP {

const JsonValue *JsonValue::get(const std::string &key) const
{
  if (type != Object) return nullptr;
  for (size_t k = 0; k < keys.size(); ++k)
    if (keys[k] == key) return &items[k];
  return nullptr;
}

namespace {

class Parser {
 public:
  explicit Parser(const std::string &s) : s_(s) {}

  JsonValue document()
  {
    JsonValue v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string &s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string &what) const
  {
    throw std::runtime_error("invalid JSON metadata (" + what + " at character " +
                             std::to_string(pos_) + ")");
  }

  void skip_space()
  {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t'))
      ++pos_;
  }

  bool consume(char c)
  {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void expect(char c)
  {
    if (!consume(c)) fail(std::string("expected '") + c + "'");
  }

  bool literal(const char *word)
  {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  JsonValue value(int depth)
  {
    if (depth > 64) fail("nesting too deep");
    skip_space();
    if (pos_ >= s_.size()) fail("unexpected end");
    JsonValue v;
    char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v.type = JsonValue::Object;
      if (consume('}')) return v;
      do {
        skip_space();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a key string");
        v.keys.push_back(string());
        expect(':');
        v.items.push_back(value(depth + 1));
      } while (consume(','));
      expect('}');
    } else if (c == '[') {
      ++pos_;
      v.type = JsonValue::Array;
      if (consume(']')) return v;
      do { v.items.push_back(value(depth + 1)); } while (consume(','));
      expect(']');
    } else if (c == '"') {
      v.type = JsonValue::String;
      v.text = string();
    } else if (literal("true")) {
      v.type = JsonValue::Bool;
      v.boolean = true;
    } else if (literal("false")) {
      v.type = JsonValue::Bool;
    } else if (literal("null")) {
      v.type = JsonValue::Null;
    } else if (literal("NaN") || literal("Infinity") || literal("-Infinity")) {
      v.type = JsonValue::Number;    // Python's json writes these; value unused here
      v.number = 0.0;
    } else {
      const char *begin = s_.c_str() + pos_;
      char *end = nullptr;
      v.number = std::strtod(begin, &end);
      if (end == begin) fail("unexpected character");
      v.type = JsonValue::Number;
      pos_ += static_cast<size_t>(end - begin);
    }
    return v;
  }

  // string starting at s_[pos_] == '"'; \uXXXX escapes are kept only for ASCII
  std::string string()
  {
    ++pos_;
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned long code = std::strtoul(s_.substr(pos_, 4).c_str(), nullptr, 16);
          pos_ += 4;
          out += code < 128 ? static_cast<char>(code) : '?';
          break;
        }
        default: out += e;
      }
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }
};

}    // namespace

JsonValue parse_json(const std::string &text)
{
  return Parser(text).document();
}

}    // namespace MLIP
