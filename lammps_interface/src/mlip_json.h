// Minimal JSON reader for the model metadata (mlip_md.json inside the model file).
// Only what the plugin needs: objects, arrays, strings, numbers, booleans, null.
#ifndef MLIP_JSON_H
#define MLIP_JSON_H

#include <string>
#include <vector>

namespace MLIP {

struct JsonValue {
  enum Type { Null, Bool, Number, String, Array, Object };
  Type type = Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<JsonValue> items;   // array elements or object values
  std::vector<std::string> keys;  // object keys (parallel to items)

  // member of an object, nullptr when absent or not an object
  const JsonValue *get(const std::string &key) const;
  bool is_number() const { return type == Number; }
  bool is_string() const { return type == String; }
};

// Parse a JSON document; throws std::runtime_error with the offending position.
JsonValue parse_json(const std::string &text);

}    // namespace MLIP

#endif
