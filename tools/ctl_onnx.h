/*
 * ctl_onnx.h - a network as an ONNX model, the file format that ONNX
 * Runtime, Triton, OpenVINO, TensorRT and browser runtimes load.
 *
 * The model is an ONNX ModelProto of IR version CTL_ONNX_IR_VERSION that
 * imports the default-domain operator set CTL_ONNX_OPSET. Its graph:
 *
 *   images         float [N, input]    input; N is symbolic, pixels in [0, 1]
 *   for layer i = 1 .. layers:
 *     layer<i>/MatMul = MatMul(previous, layer<i>/weights)
 *     layer<i>/Add    = Add(layer<i>/MatMul, layer<i>/biases)
 *     layer<i>/Relu   = Relu(layer<i>/Add)            hidden layers only
 *   logits         float [N, output]   output: the last layer's Add
 *   probabilities  float [N, output]   output: Softmax(logits) over the classes
 *
 * The initializers layer<i>/weights [in, out] and layer<i>/biases [out]
 * carry TensorFlow's tensor names, as in the checkpoints, with the values
 * given in mlp.h's parameter layout. The encoding is protobuf-c's, from the
 * schema subset in tools/onnx.proto.
 */
#ifndef CTL_ONNX_H
#define CTL_ONNX_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "mlp.h"

#define CTL_ONNX_IR_VERSION 7
#define CTL_ONNX_OPSET      13
/* At most this many metadata_props entries. */
#define CTL_ONNX_MAX_PROPS 16

/* What the model says about itself besides its graph. */
struct ctl_onnx_desc {
	const char *producer_version; /* producer_version (producer_name is "mnistd") */
	int64_t model_version;        /* model_version, e.g. the source's global step */
	const char *doc_string;       /* a description for people, or NULL */
	const struct mn_meta *props;  /* metadata_props entries, written in this order */
	size_t nprops;                /* at most CTL_ONNX_MAX_PROPS */
};

/*
 * Encodes the network arch with params (mlp.h's layout) as the ONNX model
 * above, into a malloc'd buffer: *buf (free() it) of *len bytes. Returns 0,
 * or -ENOMEM, or -EINVAL, with a message in err, for an invalid
 * architecture or description, a string of the description that is not
 * well-formed UTF-8 (protobuf's strings are UTF-8, and ONNX readers decode
 * them), or a parameter that is NaN or infinite (the message names the
 * tensor and the element).
 */
int ctl_onnx_encode(const struct mn_arch *arch, const float *params,
                    const struct ctl_onnx_desc *desc, uint8_t **buf, size_t *len, char *err,
                    size_t errlen);

#endif
