/*
 * test_ctl_onnx.c - the ONNX encoder: decoded with protobuf-c, the model
 * has the promised header, names and shapes, carries the parameters
 * exactly, and its graph, interpreted here node by node, computes the
 * logits mlp.c computes. (ONNX's own checker and ONNX Runtime check the
 * same files end to end in tests/e2e/test_export.py.)
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_onnx.h"
#include "mlp.h"
#include "onnx.pb-c.h"
#include "util.h"

#include "mn_test.h"

#define ROWS 3

struct encoded {
	struct mn_arch arch;
	float *params;
	Onnx__ModelProto *model;
};

static void encode(struct encoded *e, size_t input, size_t nhidden, const size_t *hidden,
                   size_t output)
{
	static const struct mn_meta props[] = {{"source", "model.ckpt-7.safetensors"},
	                                       {"global_step", "7"}};
	struct ctl_onnx_desc d = {.producer_version = "9.8.7",
	                          .model_version = 7,
	                          .doc_string = "a test model",
	                          .props = props,
	                          .nprops = 2};
	struct mn_test_lcg g = {42};
	char err[MN_ERRLEN];
	uint8_t *buf = NULL;
	size_t len = 0, n;

	e->arch = mn_test_arch(input, nhidden, hidden, output);
	n = mn_arch_param_count(&e->arch);
	e->params = malloc(n * sizeof(float));
	ck_assert_ptr_nonnull(e->params);
	for (size_t i = 0; i < n; i++)
		e->params[i] = mn_test_lcg_sym(&g, 1.0f);
	ck_assert_int_eq(ctl_onnx_encode(&e->arch, e->params, &d, &buf, &len, err, sizeof(err)), 0);
	e->model = onnx__model_proto__unpack(NULL, len, buf);
	ck_assert_ptr_nonnull(e->model);
	free(buf);
}

static void encoded_free(struct encoded *e)
{
	onnx__model_proto__free_unpacked(e->model, NULL);
	free(e->params);
}

/* A graph input or output: float [N, width] with N symbolic. */
static void check_value(const Onnx__ValueInfoProto *v, const char *name, size_t width)
{
	const Onnx__TypeProto__Tensor *t;

	ck_assert_str_eq(v->name, name);
	ck_assert_ptr_nonnull(v->type);
	ck_assert_int_eq(v->type->value_case, ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE);
	t = v->type->tensor_type;
	ck_assert_int_eq(t->elem_type, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
	ck_assert_uint_eq(t->shape->n_dim, 2);
	ck_assert_int_eq(t->shape->dim[0]->value_case,
	                 ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM);
	ck_assert_str_eq(t->shape->dim[0]->dim_param, "N");
	ck_assert_int_eq(t->shape->dim[1]->value_case,
	                 ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE);
	ck_assert_int_eq(t->shape->dim[1]->dim_value, (int64_t)width);
}

START_TEST(test_header_and_metadata)
{
	size_t hidden[] = {5};
	struct encoded e;
	Onnx__ModelProto *m;

	encode(&e, 4, 1, hidden, 3);
	m = e.model;
	ck_assert_int_eq(m->ir_version, 7);
	ck_assert_uint_eq(m->n_opset_import, 1);
	ck_assert_str_eq(m->opset_import[0]->domain, "");
	ck_assert_int_eq(m->opset_import[0]->version, 13);
	ck_assert_str_eq(m->producer_name, "mnistd");
	ck_assert_str_eq(m->producer_version, "9.8.7");
	ck_assert_int_eq(m->model_version, 7);
	ck_assert_str_eq(m->doc_string, "a test model");
	ck_assert_uint_eq(m->n_metadata_props, 2);
	ck_assert_str_eq(m->metadata_props[0]->key, "source");
	ck_assert_str_eq(m->metadata_props[0]->value, "model.ckpt-7.safetensors");
	ck_assert_str_eq(m->metadata_props[1]->key, "global_step");
	ck_assert_str_eq(m->metadata_props[1]->value, "7");
	ck_assert_uint_eq(m->graph->n_input, 1);
	check_value(m->graph->input[0], "images", 4);
	ck_assert_uint_eq(m->graph->n_output, 2);
	check_value(m->graph->output[0], "logits", 3);
	check_value(m->graph->output[1], "probabilities", 3);
	encoded_free(&e);
}
END_TEST

/* Initializers carry TensorFlow's names, the layer shapes and the exact values. */
START_TEST(test_initializers)
{
	size_t hidden[] = {6, 5};
	struct encoded e;
	Onnx__GraphProto *g;

	encode(&e, 4, 2, hidden, 3);
	g = e.model->graph;
	ck_assert_uint_eq(g->n_initializer, 6);
	for (size_t l = 0; l < 3; l++) {
		size_t in = mn_arch_layer_in(&e.arch, l), out = mn_arch_layer_out(&e.arch, l);
		const Onnx__TensorProto *w = g->initializer[2 * l], *b = g->initializer[2 * l + 1];
		char name[32];

		snprintf(name, sizeof(name), "layer%zu/weights", l + 1);
		ck_assert_str_eq(w->name, name);
		snprintf(name, sizeof(name), "layer%zu/biases", l + 1);
		ck_assert_str_eq(b->name, name);
		ck_assert_int_eq(w->data_type, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
		ck_assert_uint_eq(w->n_dims, 2);
		ck_assert_int_eq(w->dims[0], (int64_t)in);
		ck_assert_int_eq(w->dims[1], (int64_t)out);
		ck_assert_uint_eq(b->n_dims, 1);
		ck_assert_int_eq(b->dims[0], (int64_t)out);
		ck_assert_uint_eq(w->n_float_data, in * out);
		ck_assert_uint_eq(b->n_float_data, out);
		ck_assert_mem_eq(w->float_data, e.params + mn_arch_weights_offset(&e.arch, l),
		                 in * out * sizeof(float));
		ck_assert_mem_eq(b->float_data, e.params + mn_arch_biases_offset(&e.arch, l),
		                 out * sizeof(float));
	}
	encoded_free(&e);
}
END_TEST

/* A named [ROWS, width] value while the graph is interpreted. */
struct value {
	const char *name;
	size_t width;
	float *data;
};

static struct value *lookup(struct value *vals, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(vals[i].name, name) == 0)
			return &vals[i];
	ck_abort_msg("value %s is used before it is computed", name);
	return NULL;
}

static const Onnx__TensorProto *initializer(const Onnx__GraphProto *g, const char *name)
{
	for (size_t i = 0; i < g->n_initializer; i++)
		if (strcmp(g->initializer[i]->name, name) == 0)
			return g->initializer[i];
	return NULL;
}

/* Runs one node of the four kinds the encoder writes, over ROWS rows. */
static void run_node(const Onnx__GraphProto *g, const Onnx__NodeProto *node, struct value *vals,
                     size_t *nvals)
{
	const struct value *x = lookup(vals, *nvals, node->input[0]);
	const Onnx__TensorProto *t = node->n_input > 1 ? initializer(g, node->input[1]) : NULL;
	size_t k = x->width;
	struct value *y = &vals[(*nvals)++];

	ck_assert_uint_eq(node->n_output, 1);
	if (strcmp(node->op_type, "MatMul") == 0) {
		ck_assert_ptr_nonnull(t);
		ck_assert_int_eq(t->dims[0], (int64_t)x->width);
		k = (size_t)t->dims[1];
	}
	*y = (struct value){node->output[0], k, calloc(ROWS * k, sizeof(float))};
	ck_assert_ptr_nonnull(y->data);
	for (size_t r = 0; r < ROWS; r++) {
		const float *in = x->data + r * x->width;
		float *out = y->data + r * k;
		double sum = 0.0;

		for (size_t j = 0; j < k; j++) {
			if (strcmp(node->op_type, "MatMul") == 0) {
				for (size_t i = 0; i < x->width; i++)
					out[j] += in[i] * t->float_data[i * k + j];
			} else if (strcmp(node->op_type, "Add") == 0) {
				out[j] = in[j] + t->float_data[j];
			} else if (strcmp(node->op_type, "Relu") == 0) {
				out[j] = in[j] > 0.0f ? in[j] : 0.0f;
			} else {
				ck_assert_str_eq(node->op_type, "Softmax");
				out[j] = expf(in[j]);
				sum += out[j];
			}
		}
		for (size_t j = 0; sum > 0.0 && j < k; j++)
			out[j] = (float)(out[j] / sum);
	}
}

START_TEST(test_graph_computes_the_mlp)
{
	static const char *const ops[] = {"MatMul", "Add",    "Relu", "MatMul", "Add",
	                                  "Relu",   "MatMul", "Add",  "Softmax"};
	size_t hidden[] = {6, 5}, nvals = 1;
	struct value vals[16];
	struct mn_test_lcg rng = {7};
	struct encoded e;
	struct mn_mlp *mlp = NULL;
	uint8_t pred[ROWS];
	float x[ROWS * 4];
	const Onnx__GraphProto *g;
	const float *logits;
	double sum;

	encode(&e, 4, 2, hidden, 3);
	g = e.model->graph;
	ck_assert_uint_eq(g->n_node, 9);
	for (size_t i = 0; i < ROWS * 4; i++)
		x[i] = mn_test_lcg_uniform(&rng);
	vals[0] = (struct value){"images", 4, x};
	for (size_t i = 0; i < g->n_node; i++) {
		ck_assert_str_eq(g->node[i]->op_type, ops[i]);
		run_node(g, g->node[i], vals, &nvals);
	}
	ck_assert_int_eq(mn_mlp_new(&e.arch, ROWS, &mlp, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_eval(mlp, e.params, x, NULL, ROWS, NULL, NULL, pred), 0);
	logits = mn_mlp_logits(mlp);
	for (size_t i = 0; i < ROWS * 3; i++)
		ck_assert_float_eq_tol(lookup(vals, nvals, "logits")->data[i], logits[i], 1e-5);
	for (size_t r = 0; r < ROWS; r++) {
		sum = 0.0;
		for (size_t j = 0; j < 3; j++)
			sum += lookup(vals, nvals, "probabilities")->data[r * 3 + j];
		ck_assert_double_eq_tol(sum, 1.0, 1e-6);
	}
	for (size_t i = 1; i < nvals; i++)
		free(vals[i].data);
	mn_mlp_free(mlp);
	encoded_free(&e);
}
END_TEST

START_TEST(test_no_hidden_layer)
{
	struct encoded e;
	const Onnx__GraphProto *g;

	encode(&e, 2, 0, NULL, 2);
	g = e.model->graph;
	ck_assert_uint_eq(g->n_node, 3);
	ck_assert_str_eq(g->node[0]->input[0], "images");
	ck_assert_str_eq(g->node[1]->output[0], "logits");
	ck_assert_str_eq(g->node[2]->op_type, "Softmax");
	ck_assert_str_eq(g->node[2]->output[0], "probabilities");
	encoded_free(&e);
}
END_TEST

START_TEST(test_refusals)
{
	struct mn_arch bad = mn_test_arch(0, 0, NULL, 2), good = mn_test_arch(2, 0, NULL, 2);
	struct mn_meta nokey[] = {{NULL, "x"}};
	struct ctl_onnx_desc d = {.producer_version = "1"};
	float params[6] = {0};
	char err[MN_ERRLEN] = "";
	uint8_t *buf = NULL;
	size_t len = 0;

	ck_assert_int_eq(ctl_onnx_encode(&bad, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	d.props = nokey;
	d.nprops = 1;
	ck_assert_int_eq(ctl_onnx_encode(&good, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no key or value"));
	d.nprops = CTL_ONNX_MAX_PROPS + 1;
	ck_assert_int_eq(ctl_onnx_encode(&good, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	d.nprops = 0;
	d.producer_version = NULL;
	ck_assert_int_eq(ctl_onnx_encode(&good, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(buf);
}
END_TEST

/*
 * Every string field of an ONNX model must be UTF-8 (protobuf's string
 * type): a reader decodes them, and Python's onnx handed a file name that
 * was not back as bytes. The encoder refuses such a description, naming
 * the field, rather than writing a model other tools choke on.
 */
START_TEST(test_refuses_strings_that_are_not_utf8)
{
	struct mn_arch arch = mn_test_arch(2, 0, NULL, 2);
	struct mn_meta props[] = {{"source", "ok"}, {"global_step", "1"}};
	struct ctl_onnx_desc d = {.producer_version = "1.0", .props = props, .nprops = 2};
	float params[6] = {0};
	char err[MN_ERRLEN] = "";
	uint8_t *buf = NULL;
	size_t len = 0;
	static const char *const bad[] = {"m\xff.safetensors", "\xc0\xaf", "\xed\xa0\x80",
	                                  "cut \xe2\x82"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		d.producer_version = bad[i];
		ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)),
		                 -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "producer_version is not valid UTF-8"));
		d.producer_version = "1.0";
		d.doc_string = bad[i];
		ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)),
		                 -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "doc_string is not valid UTF-8"));
		d.doc_string = NULL;
		props[0].value = bad[i];
		ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)),
		                 -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "metadata \"source\" is not valid UTF-8"));
		props[0].value = "ok";
		props[1].key = bad[i];
		ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)),
		                 -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "metadata key 1 is not valid UTF-8"));
		props[1].key = "global_step";
		ck_assert_ptr_null(buf);
	}
	/* Well-formed multi-byte text is fine. */
	d.doc_string = "mod\xc3\xa8le \xe2\x82\xac \xf0\x9f\x98\x80";
	ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)), 0);
	free(buf);
}
END_TEST

/*
 * A NaN or an infinity among the values is refused, naming the tensor and
 * the element: runtimes propagate it where mnistd's ReLU does not (ONNX
 * Runtime gives NaN logits for every image where predict gives numbers),
 * so the model would neither classify nor match predict.
 */
START_TEST(test_refuses_values_that_are_not_finite)
{
	size_t hidden[] = {3};
	struct mn_arch arch = mn_test_arch(4, 1, hidden, 2);
	struct ctl_onnx_desc d = {.producer_version = "1.0"};
	size_t n = mn_arch_param_count(&arch);
	float *params = calloc(n, sizeof(float));
	char err[MN_ERRLEN] = "";
	uint8_t *buf = NULL;
	size_t len = 0;

	ck_assert_ptr_nonnull(params);
	/* layer1/weights [4, 3]: element (2, 1). */
	params[mn_arch_weights_offset(&arch, 0) + 2 * 3 + 1] = NAN;
	ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "layer1/weights[2, 1] is nan"));
	params[mn_arch_weights_offset(&arch, 0) + 2 * 3 + 1] = 0.0f;
	params[mn_arch_biases_offset(&arch, 1) + 1] = -INFINITY;
	ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "layer2/biases[1] is -inf"));
	ck_assert_ptr_null(buf);
	params[mn_arch_biases_offset(&arch, 1) + 1] = 3.4e38f;
	ck_assert_int_eq(ctl_onnx_encode(&arch, params, &d, &buf, &len, err, sizeof(err)), 0);
	free(buf);
	free(params);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ctl_onnx");

	MN_TEST_ADD(mn_test_tcase(s, "core", NULL, NULL), test_header_and_metadata,
	            test_initializers, test_graph_computes_the_mlp, test_no_hidden_layer,
	            test_refusals, test_refuses_strings_that_are_not_utf8,
	            test_refuses_values_that_are_not_finite);
	return mn_test_run(s);
}
