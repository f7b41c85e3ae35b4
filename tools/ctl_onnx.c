/*
 * ctl_onnx.c - see ctl_onnx.h. The messages are built in one allocation
 * that owns every name; the float data is not copied: the initializers
 * point into the caller's parameters while protobuf-c packs them.
 */
#include "ctl_onnx.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "model.h"
#include "onnx.pb-c.h"
#include "util.h"

#define LAYERS_MAX (MN_MAX_HIDDEN + 1)
/* MatMul, Add and Relu per layer (no Relu on the last), then Softmax. */
#define NODES_MAX (3 * LAYERS_MAX)
#define NAME_LEN  48

/* A graph input or output: a float tensor [N, width]. */
struct io_value {
	Onnx__ValueInfoProto info;
	Onnx__TypeProto type;
	Onnx__TypeProto__Tensor tensor;
	Onnx__TensorShapeProto shape;
	Onnx__TensorShapeProto__Dimension dim[2], *dims[2];
};

struct node {
	Onnx__NodeProto proto;
	char *inputs[2], *outputs[1];
	char name[NAME_LEN];
};

struct builder {
	Onnx__ModelProto model;
	Onnx__OperatorSetIdProto opset, *opsets[1];
	Onnx__GraphProto graph;
	struct node nodes[NODES_MAX];
	Onnx__NodeProto *node_ptrs[NODES_MAX];
	Onnx__TensorProto init[2 * LAYERS_MAX], *init_ptrs[2 * LAYERS_MAX];
	char init_names[2 * LAYERS_MAX][NAME_LEN];
	int64_t init_dims[2 * LAYERS_MAX][2];
	struct io_value images, logits, probabilities;
	Onnx__ValueInfoProto *inputs[1], *outputs[2];
	Onnx__StringStringEntryProto props[CTL_ONNX_MAX_PROPS], *prop_ptrs[CTL_ONNX_MAX_PROPS];
};

/* protobuf-c's message fields are not const; packing only reads them. */
static char *str(const char *s)
{
	return (char *)s;
}

static void io_value_init(struct io_value *v, const char *name, int64_t width, const char *doc)
{
	v->info = (Onnx__ValueInfoProto)ONNX__VALUE_INFO_PROTO__INIT;
	v->type = (Onnx__TypeProto)ONNX__TYPE_PROTO__INIT;
	v->tensor = (Onnx__TypeProto__Tensor)ONNX__TYPE_PROTO__TENSOR__INIT;
	v->shape = (Onnx__TensorShapeProto)ONNX__TENSOR_SHAPE_PROTO__INIT;
	for (size_t i = 0; i < 2; i++) {
		v->dim[i] =
		    (Onnx__TensorShapeProto__Dimension)ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
		v->dims[i] = &v->dim[i];
	}
	/* The batch size is symbolic, so any number of images can be run at once. */
	v->dim[0].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
	v->dim[0].dim_param = str("N");
	v->dim[1].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
	v->dim[1].dim_value = width;
	v->shape.n_dim = 2;
	v->shape.dim = v->dims;
	v->tensor.has_elem_type = 1;
	v->tensor.elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
	v->tensor.shape = &v->shape;
	v->type.value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
	v->type.tensor_type = &v->tensor;
	v->info.name = str(name);
	v->info.type = &v->type;
	v->info.doc_string = str(doc);
}

/* Appends a node op(in0[, in1]) whose name is also the name of its output value. */
static char *add_node(struct builder *b, const char *op, const char *name, char *in0, char *in1)
{
	struct node *n = &b->nodes[b->graph.n_node];

	n->proto = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
	snprintf(n->name, sizeof(n->name), "%s", name);
	n->inputs[0] = in0;
	n->inputs[1] = in1;
	n->outputs[0] = n->name;
	n->proto.n_input = in1 ? 2 : 1;
	n->proto.input = n->inputs;
	n->proto.n_output = 1;
	n->proto.output = n->outputs;
	n->proto.name = n->name;
	n->proto.op_type = str(op);
	b->node_ptrs[b->graph.n_node++] = &n->proto;
	return n->name;
}

/* Adds layer l's weights (biases when biases) as an initializer; returns its name. */
static char *add_initializer(struct builder *b, const struct mn_arch *arch, const float *params,
                             size_t l, bool biases)
{
	size_t i = b->graph.n_initializer, in = mn_arch_layer_in(arch, l),
	       out = mn_arch_layer_out(arch, l);
	Onnx__TensorProto *t = &b->init[i];

	*t = (Onnx__TensorProto)ONNX__TENSOR_PROTO__INIT;
	snprintf(b->init_names[i], NAME_LEN, "layer%zu/%s", l + 1, biases ? "biases" : "weights");
	t->name = b->init_names[i];
	t->has_data_type = 1;
	t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
	t->dims = b->init_dims[i];
	if (biases) {
		t->n_dims = 1;
		t->dims[0] = (int64_t)out;
		t->n_float_data = out;
		t->float_data = (float *)params + mn_arch_biases_offset(arch, l);
	} else {
		t->n_dims = 2;
		t->dims[0] = (int64_t)in;
		t->dims[1] = (int64_t)out;
		t->n_float_data = in * out;
		t->float_data = (float *)params + mn_arch_weights_offset(arch, l);
	}
	b->init_ptrs[b->graph.n_initializer++] = t;
	return t->name;
}

static void build_graph(struct builder *b, const struct mn_arch *arch, const float *params)
{
	size_t layers = mn_arch_layers(arch);
	char name[NAME_LEN], *h = str("images");

	b->graph = (Onnx__GraphProto)ONNX__GRAPH_PROTO__INIT;
	b->graph.name = str("mnistd_mlp");
	b->graph.node = b->node_ptrs;
	b->graph.initializer = b->init_ptrs;
	for (size_t l = 0; l < layers; l++) {
		char *w = add_initializer(b, arch, params, l, false);
		char *bias = add_initializer(b, arch, params, l, true);

		snprintf(name, sizeof(name), "layer%zu/MatMul", l + 1);
		h = add_node(b, "MatMul", name, h, w);
		snprintf(name, sizeof(name), "layer%zu/Add", l + 1);
		if (l + 1 == layers) {
			/* The last Add is the logits output, so its value takes that name. */
			h = add_node(b, "Add", "logits", h, bias);
			break;
		}
		h = add_node(b, "Add", name, h, bias);
		snprintf(name, sizeof(name), "layer%zu/Relu", l + 1);
		h = add_node(b, "Relu", name, h, NULL);
	}
	/* Softmax-13 normalises over the last axis (axis = -1) by default: the classes. */
	add_node(b, "Softmax", "probabilities", h, NULL);

	io_value_init(&b->images, "images", (int64_t)arch->input,
	              "images as rows of pixels scaled to [0, 1] (byte / 255), row-major as in "
	              "the IDX file");
	io_value_init(&b->logits, "logits", (int64_t)arch->output,
	              "unnormalised class scores; the predicted class is their arg-max");
	io_value_init(&b->probabilities, "probabilities", (int64_t)arch->output,
	              "softmax of the logits over the classes");
	b->inputs[0] = &b->images.info;
	b->outputs[0] = &b->logits.info;
	b->outputs[1] = &b->probabilities.info;
	b->graph.n_input = 1;
	b->graph.input = b->inputs;
	b->graph.n_output = 2;
	b->graph.output = b->outputs;
}

static void build_model(struct builder *b, const struct ctl_onnx_desc *d)
{
	b->model = (Onnx__ModelProto)ONNX__MODEL_PROTO__INIT;
	b->model.has_ir_version = 1;
	b->model.ir_version = CTL_ONNX_IR_VERSION;
	b->opset = (Onnx__OperatorSetIdProto)ONNX__OPERATOR_SET_ID_PROTO__INIT;
	b->opset.domain = str(""); /* the default domain, ai.onnx */
	b->opset.has_version = 1;
	b->opset.version = CTL_ONNX_OPSET;
	b->opsets[0] = &b->opset;
	b->model.n_opset_import = 1;
	b->model.opset_import = b->opsets;
	b->model.producer_name = str("mnistd");
	b->model.producer_version = str(d->producer_version);
	b->model.has_model_version = 1;
	b->model.model_version = d->model_version;
	b->model.doc_string = str(d->doc_string);
	b->model.graph = &b->graph;
	for (size_t i = 0; i < d->nprops; i++) {
		b->props[i] = (Onnx__StringStringEntryProto)ONNX__STRING_STRING_ENTRY_PROTO__INIT;
		b->props[i].key = str(d->props[i].key);
		b->props[i].value = str(d->props[i].value);
		b->prop_ptrs[i] = &b->props[i];
	}
	b->model.n_metadata_props = d->nprops;
	b->model.metadata_props = b->prop_ptrs;
}

/* protobuf's string fields hold UTF-8, and ONNX readers decode them as such. */
static bool utf8(const char *s)
{
	return mn_json_utf8(s, strlen(s));
}

static int check_desc(const struct ctl_onnx_desc *d, char *err, size_t errlen)
{
	if (!d->producer_version || d->nprops > CTL_ONNX_MAX_PROPS || (d->nprops && !d->props)) {
		mn_errf(err, errlen, "ONNX encoder: invalid model description");
		return -EINVAL;
	}
	if (!utf8(d->producer_version) || (d->doc_string && !utf8(d->doc_string))) {
		mn_errf(err, errlen, "ONNX encoder: %s is not valid UTF-8",
		        utf8(d->producer_version) ? "doc_string" : "producer_version");
		return -EINVAL;
	}
	for (size_t i = 0; i < d->nprops; i++) {
		if (!d->props[i].key || !d->props[i].value) {
			mn_errf(err, errlen, "ONNX encoder: metadata entry %zu has no key or value",
			        i);
			return -EINVAL;
		}
		if (!utf8(d->props[i].key)) {
			mn_errf(err, errlen, "ONNX encoder: metadata key %zu is not valid UTF-8",
			        i);
			return -EINVAL;
		}
		if (!utf8(d->props[i].value)) {
			mn_errf(err, errlen, "ONNX encoder: metadata \"%s\" is not valid UTF-8",
			        d->props[i].key);
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Refuses a NaN or an infinity. Runtimes carry it on where mlp.c's ReLU
 * turns a NaN into 0 (ONNX Runtime's gives NaN logits for every image),
 * so such a model neither classifies nor computes what predict does.
 */
static int check_finite(const struct mn_arch *arch, const float *params, char *err, size_t errlen)
{
	char what[MN_ERRLEN];
	int rc = mn_model_check_finite(arch, params, false, what, sizeof(what));

	if (rc < 0)
		mn_errf(err, errlen,
		        "%s: a model with a value that is not finite computes NaN in ONNX runtimes",
		        what);
	return rc;
}

int ctl_onnx_encode(const struct mn_arch *arch, const float *params,
                    const struct ctl_onnx_desc *desc, uint8_t **buf, size_t *len, char *err,
                    size_t errlen)
{
	struct builder *b = NULL;
	uint8_t *out = NULL;
	size_t size;
	int rc;

	if (!arch || !params || !desc || !buf || !len) {
		mn_errf(err, errlen, "ONNX encoder: invalid arguments");
		return -EINVAL;
	}
	if ((rc = mn_arch_validate(arch, err, errlen)) < 0 ||
	    (rc = check_desc(desc, err, errlen)) < 0 ||
	    (rc = check_finite(arch, params, err, errlen)) < 0)
		return rc;
	b = calloc(1, sizeof(*b));
	if (!b) {
		mn_errf(err, errlen, "out of memory for the ONNX model");
		return -ENOMEM;
	}
	build_graph(b, arch, params);
	build_model(b, desc);
	size = onnx__model_proto__get_packed_size(&b->model);
	out = malloc(size ? size : 1);
	if (!out) {
		mn_errf(err, errlen, "out of memory for an ONNX model of %zu bytes", size);
		rc = -ENOMEM;
		goto out;
	}
	if (onnx__model_proto__pack(&b->model, out) != size) {
		mn_errf(err, errlen,
		        "ONNX encoder: protobuf-c packed a size other than it measured");
		rc = -EIO;
		goto out;
	}
	*buf = out;
	*len = size;
	out = NULL;
	rc = 0;
out:
	free(out);
	free(b);
	return rc;
}
